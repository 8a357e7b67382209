# UperNet 160k, ADE20K 512x512, MambaVision-T backbone (mambavision_t).
# Published: mIoU 46.0 (55M params, 945G FLOPs).
# Source: official MambaVision semantic_segmentation/README.md (github.com/NVlabs/MambaVision), row "MambaVision-T-1K".
# Backbone as the official config mamba_vision_160k_ade20k-512x512_tiny.py: windows 64 / 32 in the hybrid
# stages (one zero-padded window per map at 512x512); drop path 0.2, the official backbone class's default (it does
# not pass its config's drop_path_rate on); batch 16 (16 GPUs x 1 image). The official run used AMP.
# fp16 AMP needs the ImageNet weights: from random weights the zero-padded window's tokens overflow fp16 gradients
# (model_cards/mambavision.md); use bf16 or mask_padding=True there.
# NON-COMMERCIAL: the MambaVision ImageNet weights are CC-BY-NC-SA-4.0 (model_cards/mambavision.md).
_base_ = ['../_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'
model = dict(
    backbone=dict(
        model='mambavision_t',
        window_size=(8, 8, 64, 32),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[80, 160, 320, 640]),
    auxiliary_head=dict(in_channels=320))
optim_wrapper = dict(optimizer=dict(lr=5e-05))  # as the official MambaVision-T config
