# UperNet 160k, ADE20K 512x512, EfficientVMamba-T backbone (efficientvmamba_tiny).
# Published: reported in the EfficientVMamba paper's ADE20K table (arXiv 2403.09977), values not retrieved
# here (a paper aggregator lists 46.5 mIoU as the family's best). No official segmentation config exists:
# drop_path_rate 0.1 as its ImageNet training (VMamba and Spatial-Mamba reuse their ImageNet rates downstream).
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/TerryPei/EfficientVMamba-Tiny/resolve/main/efficient_vmamba_tiny.ckpt'
model = dict(
    backbone=dict(
        model='efficientvmamba_tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
