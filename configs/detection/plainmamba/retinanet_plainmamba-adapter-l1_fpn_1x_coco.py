# RetinaNet FPN 1x, COCO, PlainMamba-Adapter-L1 backbone (plainmamba_l1 in a ViT-Adapter).
# Published: box AP 41.7 (19M params).
# Source: official PlainMamba README (github.com/ChenhongyiYang/PlainMamba), "COCO RetinaNet 1x Schedule" table.
# The official recipe (downstream/mmdetection/plain_mamba_det_configs/retinanet/l1_retinanet_1x.py and
# template/retinanet_1x.py, mmdet 2.x, read at commit 0a3aae7e), in mmdet 3.x form:
# - backbone: as in mask-rcnn_plainmamba-adapter-l1_fpn_1x_coco.py (PlainMamba-L1 in ViT-Adapter, drop path 0.1);
# - FPN from stride 8 with SyncBN, its two extra levels from its own output; mmdet's RetinaNet head and settings;
#   every BatchNorm synced (sync_bn='torch');
# - 1333x800 resize and flip, 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, no decay on names containing level_embed,
#   pos_embed, norm, bias, .A_log, .D, .direction_Bs; gradient norm clipped at 35; 12 epochs, steps at 8 and 11,
#   500-iteration linear warm-up; fp32.
# Differs: the official backbone also computes the stride-4 level, which its FPN (start_level=1) ignores
# (find_unused_parameters=True); here the backbone returns only the three levels the FPN reads (out_indices 1-3), so
# the stride-4 branch (spm.fc1, the transposed conv, its norm) is not built. The BatchNorms synchronize only in
# distributed runs.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

pretrained = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/l1.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='visionssm.VisionSSMBackbone',
        model='plainmamba_l1',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        adapter=dict(
            interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
            conv_inplane=64,
            n_points=4,
            deform_num_heads=6,
            cffn_ratio=0.25,
            deform_ratio=1.0,
            drop_path=0.1),  # officially the backbone's drop_path_rate
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        in_channels=[192, 192, 192],
        start_level=0,
        add_extra_convs='on_output',
        norm_cfg=dict(type='SyncBN', requires_grad=True)))
sync_bn = 'torch'

# The official paramwise_cfg: names containing these substrings get no weight decay.
optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=35, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'level_embed': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'bias': dict(decay_mult=0.),
            '.A_log': dict(decay_mult=0.),
            '.D': dict(decay_mult=0.),
            '.direction_Bs': dict(decay_mult=0.),
        }))
