# Mask R-CNN FPN 1x, COCO, GroupMamba-T backbone (groupmamba_tiny).
# Published: reported for GroupMamba-T in the paper's Mask R-CNN 1x table (arXiv 2407.13772), values not retrieved
# here: the official repository has neither dense code nor numbers. No official detection config exists either:
# drop_path_rate 0.05 as its ImageNet training (VMamba and Spatial-Mamba reuse their ImageNet rates downstream).
_base_ = ['./_base_/mask-rcnn_visionssm_fpn_1x_coco.py']

pretrained = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        model='groupmamba_tiny',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 348, 448]))
