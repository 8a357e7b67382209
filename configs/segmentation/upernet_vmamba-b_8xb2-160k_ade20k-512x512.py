# UperNet 160k, ADE20K 512x512, VMamba-B[s2l15] backbone (vmamba_base_s2l15).
# Published: mIoU 51.0 (single scale) / 51.6 (multi-scale), 122M params, 1170G FLOPs.
# Source: official VMamba README (github.com/MzeroMiko/VMamba), row "VMamba-B[s2l15] | UperNet@160k".
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        model='vmamba_base_s2l15',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
