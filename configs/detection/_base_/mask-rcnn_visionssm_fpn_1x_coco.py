# Mask R-CNN FPN 1x on COCO with a visionssm backbone: mmdet's Swin-T recipe (AdamW 1e-4, wd 0.05, 12 epochs,
# steps 8/11, 1000-iter warm-up, 2 images x 8 GPUs, 1333x800) with its backbone replaced. The variant configs set
# model.backbone.{model, drop_path_rate, init_cfg} and model.neck.in_channels (the backbone's channels).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

pretrained = None  # the variant's official ImageNet-1k checkpoint (url or path)
model = dict(
    backbone=dict(
        _delete_=True,
        type='visionssm.VisionSSMBackbone',
        model='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# No weight decay on what is not a weight matrix: 1-D tensors (norms, biases, the SSM's D, Vim's D_b, GroupMamba's
# skip scale, Spatial-Mamba's fusion weights) and, by name, the stacked ones: A_logs (A_log, A_b_log in Vim),
# dt_projs_bias, GroupMamba's stacked out_norm_{weight,bias}, Vim's position embedding and class token,
# PlainMamba's direction_Bs.
# (custom_keys match by substring: a key like 'D' would catch every name with a capital D.)
optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    paramwise_cfg=dict(
        _delete_=True,
        flat_decay_mult=0.,
        custom_keys={
            'A_log': dict(decay_mult=0.),
            'A_b_log': dict(decay_mult=0.),
            'dt_projs_bias': dict(decay_mult=0.),
            'out_norm': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'direction_Bs': dict(decay_mult=0.),
        }))
