# UperNet 160k, ADE20K 512x512, PlainMamba-L3 backbone (plainmamba_l3).
# Published: mIoU 49.1, 81M parameters. Source: ChenhongyiYang/PlainMamba README ("ADE20K UperNet").
# As the official segmentation backbone (downstream/mmsegmentation/plain_mamba_seg_configs/l3_upernet.py): no
# feature pyramid, UperNet reads the outputs of the last block of each quarter of the depth, all at stride 16,
# each through a LayerNorm; the position embedding of the 224 model is resized at every forward; decode channels
# 512, the auxiliary FCN head on the last output; AdamW 6e-5, weight decay 0.01 (none on norms, pos_embed, A_log,
# D, direction_Bs), poly schedule with 1500 warm-up iterations, 8x2 images, whole-image test; drop path 0.3.
# Differs: the official last output goes through the pretrained final LayerNorm (ln1, eps 1e-6) and the others
# through new ones of eps 1e-6; here each output gets a new LayerNorm (eps 1e-5).
_base_ = ['./_base_/upernet_visionssm_8xb2-160k_ade20k-512x512.py']

checkpoint_file = 'https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/l3.pth'
model = dict(
    backbone=dict(
        model='plainmamba_l3',
        reductions=(16, 16, 16, 16),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[448, 448, 448, 448], channels=512),
    auxiliary_head=dict(in_channels=448, in_index=3))
