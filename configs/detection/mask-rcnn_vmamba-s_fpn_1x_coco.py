# Mask R-CNN FPN 1x, COCO, VMamba-S[s2l15] backbone (vmamba_small_s2l15).
# Published: box AP 48.7, mask AP 43.7 (70M params, 384G FLOPs).
# Source: official VMamba README (github.com/MzeroMiko/VMamba), row "VMamba-S[s2l15] | MaskRCNN@1x".
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        model='vmamba_small_s2l15',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
