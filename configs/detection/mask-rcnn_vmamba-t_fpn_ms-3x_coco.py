# Mask R-CNN FPN 3x multi-scale, COCO, VMamba-T[s1l8] backbone (vmamba_tiny_s1l8).
# Published: box AP 48.8, mask AP 43.7 (50M params, 271G FLOPs).
# Source: official VMamba README (github.com/MzeroMiko/VMamba), row "VMamba-T[s1l8] | MaskRCNN@3x".
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_ms-3x_coco.py']

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        model='vmamba_tiny_s1l8',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
