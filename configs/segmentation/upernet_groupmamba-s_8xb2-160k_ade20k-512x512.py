# UperNet 160k, ADE20K 512x512, GroupMamba-S backbone (groupmamba_small).
# Published: not reported (the GroupMamba paper reports segmentation for GroupMamba-T only).
# drop_path_rate 0.05 as its ImageNet training.
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/Abdelrahman-shaker/GroupMamba-Small/resolve/main/groupmamba_small_ema.pth'
model = dict(
    backbone=dict(
        model='groupmamba_small',
        drop_path_rate=0.05,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 348, 512]),
    auxiliary_head=dict(in_channels=348))
