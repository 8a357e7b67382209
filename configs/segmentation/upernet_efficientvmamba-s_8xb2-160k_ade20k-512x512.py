# UperNet 160k, ADE20K 512x512, EfficientVMamba-S backbone (efficientvmamba_small).
# Published: reported in the EfficientVMamba paper's ADE20K table (arXiv 2403.09977), values not retrieved
# here (a paper aggregator lists 46.5 mIoU as the family's best). No official segmentation config exists:
# drop_path_rate 0.1 as its ImageNet training (VMamba and Spatial-Mamba reuse their ImageNet rates downstream).
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/TerryPei/EfficientVMamba-Small/resolve/main/efficient_vmamba_small.ckpt'
model = dict(
    backbone=dict(
        model='efficientvmamba_small',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
