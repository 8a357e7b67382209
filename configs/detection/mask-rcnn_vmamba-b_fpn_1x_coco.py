# Mask R-CNN FPN 1x, COCO, VMamba-B[s2l15] backbone (vmamba_base_s2l15).
# Published: box AP 49.2, mask AP 44.1 (108M params, 485G FLOPs).
# Source: official VMamba README (github.com/MzeroMiko/VMamba), row "VMamba-B[s2l15] | MaskRCNN@1x".
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        model='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
