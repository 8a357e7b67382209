# UperNet 160k, ADE20K 512x512, MambaVision-B backbone (mambavision_b).
# Published: mIoU 49.1 (126M params, 1342G FLOPs).
# Source: official MambaVision semantic_segmentation/README.md (github.com/NVlabs/MambaVision), row "MambaVision-B-1K".
# Backbone as the official config mamba_vision_160k_ade20k-512x512_base.py: windows 64 / 32 in the hybrid
# stages (one zero-padded window per map at 512x512); drop path 0.2, the official backbone class's default (it does
# not pass its config's drop_path_rate on); batch 16 (16 GPUs x 1 image). The official run used AMP.
# NON-COMMERCIAL: the MambaVision ImageNet weights are CC-BY-NC-SA-4.0 (model_cards/mambavision.md).
_base_ = ['../_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'
model = dict(
    backbone=dict(
        model='mambavision_b',
        window_size=(8, 8, 64, 32),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(optimizer=dict(lr=5e-05))  # as the official MambaVision-B config
