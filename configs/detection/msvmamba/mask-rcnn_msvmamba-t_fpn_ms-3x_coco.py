# Mask R-CNN FPN 3x multi-scale, COCO, MSVMamba-Tiny backbone (msvmamba_tiny).
# Published: box AP 48.3, mask AP 43.2 (53M params, 252G FLOPs).
# Source: official MSVMamba README (github.com/YuHengsss/MSVMamba, master branch), COCO Mask R-CNN 3x table.
_base_ = ['../_base_/mask-rcnn_visionssm_fpn_ms-3x_coco.py']

# The ImageNet weights are in a Google-Drive folder (the timm cfg's url,
# https://drive.google.com/drive/folders/1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU): download the
# .pth there and point this path at it (the official configs load it as vssm_tiny_ms_e300.pth).
pretrained = 'checkpoints/vssm_tiny_ms_e300.pth'
model = dict(
    backbone=dict(
        model='msvmamba_tiny',
        drop_path_rate=0.1,  # the official detection backbone keeps VSSM's default
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
