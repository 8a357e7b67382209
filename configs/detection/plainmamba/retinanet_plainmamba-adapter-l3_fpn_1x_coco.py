# RetinaNet FPN 1x, COCO, PlainMamba-Adapter-L3 backbone (plainmamba_l3 in a ViT-Adapter).
# Published: box AP 44.8 (67M params).
# Source: official PlainMamba README (github.com/ChenhongyiYang/PlainMamba), "COCO RetinaNet 1x Schedule" table.
# The recipe of the L1 config (see there, also for what differs), with the official l3_retinanet_1x.py settings:
# PlainMamba-L3, drop path 0.3 (backbone and ConvFFNs), interactions over blocks 0-8 / 9-17 / 18-26 / 27-35 with
# 8 heads, width 448.
_base_ = ['./retinanet_plainmamba-adapter-l1_fpn_1x_coco.py']

pretrained = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/l3.pth'
model = dict(
    backbone=dict(
        model='plainmamba_l3',
        drop_path_rate=0.3,
        adapter=dict(interaction_indexes=[[0, 8], [9, 17], [18, 26], [27, 35]], deform_num_heads=8, drop_path=0.3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[448, 448, 448]))
