# UperNet 160k, ADE20K 512x512, MSVMamba-Micro backbone (msvmamba_micro).
# Published: mIoU 45.1 (single scale) / 45.4 (multi-scale), 42M params, 875G FLOPs.
# Source: official MSVMamba README (github.com/YuHengsss/MSVMamba, master branch), ADE20K table.
_base_ = ['../_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

# The ImageNet weights are in a Google-Drive folder (the timm cfg's url,
# https://drive.google.com/drive/folders/1jfl2GmuKcUB8sPwRlyHK_wT0MjqgljYk):
# download the .pth there and point this path at it.
checkpoint_file = 'checkpoints/vssm_micro_ms_e300.pth'
model = dict(
    backbone=dict(
        model='msvmamba_micro',
        drop_path_rate=0.1,  # as the official segmentation config
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
