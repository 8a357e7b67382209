# UperNet 160k, ADE20K 512x512, Spatial-Mamba-S backbone (spatialmamba_small).
# Published: mIoU 50.6 (single scale) / 51.4 (multi-scale), 73M params, 992G FLOPs.
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), ADE20K table.
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://drive.google.com/uc?export=download&id=1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O'
model = dict(
    backbone=dict(
        model='spatialmamba_small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
