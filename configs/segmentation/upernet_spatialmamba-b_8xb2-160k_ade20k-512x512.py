# UperNet 160k, ADE20K 512x512, Spatial-Mamba-B backbone (spatialmamba_base).
# Published: mIoU 51.8 (single scale) / 52.6 (multi-scale), 127M params, 1176G FLOPs.
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), ADE20K table.
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://drive.google.com/uc?export=download&id=1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM'
model = dict(
    backbone=dict(
        model='spatialmamba_base',
        drop_path_rate=0.5,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
