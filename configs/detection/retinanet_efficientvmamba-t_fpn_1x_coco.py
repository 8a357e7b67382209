# RetinaNet FPN 1x, COCO, EfficientVMamba-T backbone (efficientvmamba_tiny).
# Published: AP 37.5 (13M params). Source: EfficientVMamba paper (arXiv 2403.09977), RetinaNet COCO table, as
# quoted by third-party summaries (the table itself was not re-read here). This config has 16.0M parameters: the
# paper's detector settings are not published, so it follows retinanet_vmamba-t_fpn_1x_coco.py.
_base_ = ['./retinanet_vmamba-t_fpn_1x_coco.py']

pretrained = 'https://huggingface.co/TerryPei/EfficientVMamba-Tiny/resolve/main/efficient_vmamba_tiny.ckpt'
model = dict(
    backbone=dict(
        model='efficientvmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384]))
