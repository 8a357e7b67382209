# Mask R-CNN FPN 1x, COCO, PlainMamba-Adapter-L1 backbone (plainmamba_l1 in a ViT-Adapter).
# Published: box AP 44.1, mask AP 39.1 (31M params).
# Source: official PlainMamba README (github.com/ChenhongyiYang/PlainMamba), "COCO Mask R-CNN 1x Schedule" table.
# The official recipe (downstream/mmdetection/plain_mamba_det_configs/maskrcnn/l1_maskrcnn_1x.py and
# template/maskrcnn_1x.py, mmdet 2.x, read at commit 0a3aae7e), in mmdet 3.x form:
# - backbone: PlainMamba-L1 (drop path 0.1, no final norm) inside ViT-Adapter (visionssm/mm/adapter.py): spatial
#   prior module of width 64, four interactions over blocks 0-5 / 6-11 / 12-17 / 18-23 (deformable attention, 6 heads,
#   4 points, value ratio 1, injector scale starting at 0; ConvFFN ratio 0.25, drop path 0.1; two extra extractors
#   at the end), outputs at strides 4-32 with the last block's map added, each through a BatchNorm;
# - FPN and the Shared4Conv1FC box head with SyncBN (the mask head without norm), every other BatchNorm synced too
#   (sync_bn='torch', as the official convert_syncbn and SyncBN layers); mmdet's Mask R-CNN defaults otherwise;
# - 1333x800 resize and flip, images without annotations kept, 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, no decay
#   on names containing level_embed, pos_embed, norm, bias, .A_log, .D, .direction_Bs; 12 epochs, steps at 8 and
#   11, 500-iteration linear warm-up; no gradient clipping; fp32.
# Differs: the BatchNorms inside the adapter and the tokenizer synchronize only in distributed runs (mmengine turns
# SyncBN back into BN on one process).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

pretrained = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/l1.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='visionssm.VisionSSMBackbone',
        model='plainmamba_l1',
        out_indices=(0, 1, 2, 3),
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
    neck=dict(in_channels=[192, 192, 192, 192], norm_cfg=dict(type='SyncBN', requires_grad=True)),
    roi_head=dict(bbox_head=dict(type='Shared4Conv1FCBBoxHead', norm_cfg=dict(type='SyncBN', requires_grad=True))))
sync_bn = 'torch'

train_dataloader = dict(dataset=dict(filter_cfg=dict(filter_empty_gt=False, min_size=32)))

# The official paramwise_cfg: names containing these substrings get no weight decay (other 1-D parameters, such as
# BatchNorm weights and the injectors' gamma, decay).
optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
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
