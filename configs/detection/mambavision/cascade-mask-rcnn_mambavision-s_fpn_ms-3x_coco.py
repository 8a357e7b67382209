# Cascade Mask R-CNN FPN 3x multi-scale, COCO, MambaVision-S backbone (mambavision_s).
# Published: box AP 52.3, mask AP 45.2 (108M params, 828G FLOPs).
# Source: official MambaVision object_detection/README.md (github.com/NVlabs/MambaVision), row "MambaVision-S-1K".
# Backbone as the official config cascade_mask_rcnn_mamba_vision_small_3x_coco.py: windows 112 / 56 in the hybrid
# stages (one window per map, zero-padded, up to 1792 px); drop path 0.2, the official backbone class's default (it
# does not pass its config's drop_path_rate on). The official run used AMP (AmpOptimWrapper); set it with --amp.
# NON-COMMERCIAL: the MambaVision ImageNet weights are CC-BY-NC-SA-4.0 (model_cards/mambavision.md).
_base_ = ['../_base_/cascade-mask-rcnn_visionssm_fpn_ms-3x_coco.py']

pretrained = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'
model = dict(
    backbone=dict(
        model='mambavision_s',
        window_size=(8, 8, 112, 56),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
