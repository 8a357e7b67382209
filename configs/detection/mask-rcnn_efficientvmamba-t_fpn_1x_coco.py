# Mask R-CNN FPN 1x, COCO, EfficientVMamba-T backbone (efficientvmamba_tiny).
# Published: not reported. The EfficientVMamba paper (arXiv 2403.09977) evaluates COCO with RetinaNet (see
# retinanet_efficientvmamba-t_fpn_1x_coco.py); its repository ships Mask R-CNN configs without numbers.
# drop_path_rate 0.2: what the official configs end up with (they inherit it from the Swin-T base).
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://huggingface.co/TerryPei/EfficientVMamba-Tiny/resolve/main/efficient_vmamba_tiny.ckpt'
model = dict(
    backbone=dict(
        model='efficientvmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))
