# UperNet 160k, ADE20K 512x512, Spatial-Mamba-T backbone (spatialmamba_tiny).
# Published: mIoU 48.6 (single scale) / 49.4 (multi-scale), 57M params, 936G FLOPs.
# Source: official Spatial-Mamba README (github.com/EdwardChasel/Spatial-Mamba), ADE20K table.
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://drive.google.com/uc?export=download&id=19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW'
model = dict(
    backbone=dict(
        model='spatialmamba_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
