# RetinaNet FPN 1x, COCO, VMamba-T[s1l8] backbone (vmamba_tiny_s1l8).
# Published: not reported (VMamba reports Mask R-CNN only).
# mmdet's Swin-T RetinaNet config (levels at strides 8..32, FPN adds two more) with the optimizer of the visionssm
# Mask R-CNN configs (AdamW 1e-4, wd 0.05, as Swin and VMamba train their detectors) instead of SGD.
_base_ = ['mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py']

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='visionssm.VisionSSMBackbone',
        model='vmamba_tiny_s1l8',
        out_indices=(1, 2, 3),  # only what the FPN reads: an unused level would leave parameters without gradients
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))

# No weight decay on what is not a weight matrix (see _base_/mask-rcnn_visionssm_fpn_1x_coco.py).
optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
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
