# Mask R-CNN FPN 1x, COCO, PlainMamba-Adapter-L2 backbone (plainmamba_l2 in a ViT-Adapter).
# Published: box AP 46.0, mask AP 40.6 (53M params).
# Source: official PlainMamba README (github.com/ChenhongyiYang/PlainMamba), "COCO Mask R-CNN 1x Schedule" table.
# The recipe of the L1 config (see there), with the official l2_maskrcnn_1x.py settings: PlainMamba-L2, drop path
# 0.2 (backbone and ConvFFNs), the same interactions (blocks 0-5 / 6-11 / 12-17 / 18-23, 6 heads), width 384.
_base_ = ['./mask-rcnn_plainmamba-adapter-l1_fpn_1x_coco.py']

pretrained = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/l2.pth'
model = dict(
    backbone=dict(
        model='plainmamba_l2',
        drop_path_rate=0.2,
        adapter=dict(drop_path=0.2),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384, 384, 384, 384]))
