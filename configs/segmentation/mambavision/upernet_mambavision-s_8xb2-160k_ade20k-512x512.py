# UperNet 160k, ADE20K 512x512, MambaVision-S backbone (mambavision_s).
# Published: mIoU 48.2 (84M params, 1135G FLOPs).
# Source: official MambaVision semantic_segmentation/README.md (github.com/NVlabs/MambaVision), row "MambaVision-S-1K".
# Backbone as the official config mamba_vision_160k_ade20k-512x512_small.py: windows 160 / 56 in the hybrid
# stages (one zero-padded window per map at 512x512); drop path 0.2, the official backbone class's default (it does
# not pass its config's drop_path_rate on); batch 16 (8 GPUs x 2 images). The official run used AMP.
# NON-COMMERCIAL: the MambaVision ImageNet weights are CC-BY-NC-SA-4.0 (model_cards/mambavision.md).
_base_ = ['../_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'
model = dict(
    backbone=dict(
        model='mambavision_s',
        window_size=(8, 8, 160, 56),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
