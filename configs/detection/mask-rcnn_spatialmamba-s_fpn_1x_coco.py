# Mask R-CNN FPN 1x, COCO, Spatial-Mamba-S backbone (spatialmamba_small).
# Published: box AP 49.2, mask AP 44.0 (63M params, 315G FLOPs).
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), Mask R-CNN 1x.
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://drive.google.com/uc?export=download&id=1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O'
model = dict(
    backbone=dict(
        model='spatialmamba_small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
