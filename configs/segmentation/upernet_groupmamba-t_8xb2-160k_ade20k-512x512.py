# UperNet 160k, ADE20K 512x512, GroupMamba-T backbone (groupmamba_tiny).
# Published: reported for GroupMamba-T in the paper's ADE20K UperNet table (arXiv 2407.13772), values not
# retrieved here. No official segmentation config exists: drop_path_rate 0.05 as its ImageNet training.
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Tiny/resolve/main/groupmamba_tiny_ema.pth'
model = dict(
    backbone=dict(
        model='groupmamba_tiny',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 348, 448]),
    auxiliary_head=dict(in_channels=348))
