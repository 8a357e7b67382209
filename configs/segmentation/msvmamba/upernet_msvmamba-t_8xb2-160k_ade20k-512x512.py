# UperNet 160k, ADE20K 512x512, MSVMamba-Tiny backbone (msvmamba_tiny).
# Published: mIoU 47.8 (single scale; multi-scale not reported), 65M params, 942G FLOPs.
# Source: official MSVMamba README (github.com/YuHengsss/MSVMamba, master branch), ADE20K table.
_base_ = ['../_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

# The ImageNet weights are in a Google-Drive folder (the timm cfg's url,
# https://drive.google.com/drive/folders/1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU):
# download the .pth there and point this path at it.
checkpoint_file = 'checkpoints/vssm_tiny_ms_e300.pth'
model = dict(
    backbone=dict(
        model='msvmamba_tiny',
        drop_path_rate=0.2,  # as the official segmentation config
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
