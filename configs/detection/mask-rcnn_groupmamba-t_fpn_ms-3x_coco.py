# Mask R-CNN FPN 3x multi-scale, COCO, GroupMamba-T backbone (groupmamba_tiny).
# Published: not reported.
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_ms-3x_coco.py']

pretrained = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        model='groupmamba_tiny',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 348, 448]))
