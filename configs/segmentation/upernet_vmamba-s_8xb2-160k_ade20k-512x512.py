# UperNet 160k, ADE20K 512x512, VMamba-S[s2l15] backbone (vmamba_small_s2l15).
# Published: mIoU 50.6 (single scale) / 51.2 (multi-scale), 82M params, 1028G FLOPs.
# Source: official VMamba README (github.com/MzeroMiko/VMamba), row "VMamba-S[s2l15] | UperNet@160k".
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        model='vmamba_small_s2l15',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
