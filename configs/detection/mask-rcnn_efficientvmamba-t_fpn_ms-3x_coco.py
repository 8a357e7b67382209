# Mask R-CNN FPN 3x multi-scale, COCO, EfficientVMamba-T backbone (efficientvmamba_tiny).
# Published: not reported (see mask-rcnn_efficientvmamba-t_fpn_1x_coco.py).
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_ms-3x_coco.py']

pretrained = 'https://huggingface.co/TerryPei/EfficientVMamba-Tiny/resolve/main/efficient_vmamba_tiny.ckpt'
model = dict(
    backbone=dict(
        model='efficientvmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
