# Mask R-CNN FPN 1x, COCO, Spatial-Mamba-B backbone (spatialmamba_base).
# Published: box AP 50.4, mask AP 45.1 (115M params, 494G FLOPs).
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), Mask R-CNN 1x.
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://drive.google.com/uc?export=download&id=1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM'
model = dict(
    backbone=dict(
        model='spatialmamba_base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
