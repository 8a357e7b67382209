# Mask R-CNN FPN 1x, COCO, Spatial-Mamba-T backbone (spatialmamba_tiny).
# Published: box AP 47.6, mask AP 42.9 (46M params, 261G FLOPs).
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), Mask R-CNN 1x.
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://drive.google.com/uc?export=download&id=19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW'
model = dict(
    backbone=dict(
        model='spatialmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
