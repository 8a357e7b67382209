# Mask R-CNN FPN 3x with multi-scale training on COCO with a visionssm backbone: mmdet's Swin-T ms-crop-3x recipe
# (the DETR-style multi-scale resize + crop, 36 epochs, steps 27/33; AdamW 1e-4, wd 0.05) with its backbone
# replaced. The variant configs set model.backbone.{model, drop_path_rate, init_cfg} and model.neck.in_channels.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']

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

# No weight decay on what is not a weight matrix (see mask-rcnn_visionssm_fpn_1x_coco.py).
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
