# Mask R-CNN FPN 3x multi-scale, COCO, Spatial-Mamba-T backbone (spatialmamba_tiny).
# Published: box AP 49.3, mask AP 43.6.
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), Mask R-CNN 3x.
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_ms-3x_coco.py']

pretrained = 'https://drive.google.com/uc?export=download&id=19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW'
model = dict(
    backbone=dict(
        model='spatialmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
