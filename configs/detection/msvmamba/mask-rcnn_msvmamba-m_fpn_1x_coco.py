# Mask R-CNN FPN 1x, COCO, MSVMamba-Micro backbone (msvmamba_micro).
# Published: box AP 43.8, mask AP 39.9 (32M params, 201G FLOPs).
# Source: official MSVMamba README (github.com/YuHengsss/MSVMamba, master branch), COCO Mask R-CNN 1x table.
_base_ = ['../_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

# The ImageNet weights are in a Google-Drive folder (the timm cfg's url,
# https://drive.google.com/drive/folders/1jfl2GmuKcUB8sPwRlyHK_wT0MjqgljYk): download the
# .pth there and point this path at it (the official configs load it as vssm_micro_ms_e300.pth).
pretrained = 'checkpoints/vssm_micro_ms_e300.pth'
model = dict(
    backbone=dict(
        model='msvmamba_micro',
        drop_path_rate=0.1,  # the official detection backbone keeps VSSM's default
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
