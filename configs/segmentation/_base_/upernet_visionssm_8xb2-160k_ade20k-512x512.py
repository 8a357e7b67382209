# UperNet 160k on ADE20K 512x512 with a visionssm backbone: mmseg's Swin recipe (AdamW 6e-5, wd 0.01, 1500-iter
# warm-up then poly, 2 images x 8 GPUs, whole-image test at 2048x512) with its backbone replaced. The variant
# configs set model.backbone.{model, drop_path_rate, init_cfg} and the heads' in_channels (the backbone's
# channels; the auxiliary FCN head reads level 2).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

checkpoint_file = None  # the variant's official ImageNet-1k checkpoint (url or path)
model = dict(
    backbone=dict(
        _delete_=True,
        type='visionssm.VisionSSMBackbone',
        model='vmamba_tiny_s1l8',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

# No weight decay on what is not a weight matrix: 1-D tensors (norms, biases, the SSM's D, Vim's D_b, GroupMamba's
# skip scale, Spatial-Mamba's fusion weights) and, by name, the stacked ones: A_logs (A_log, A_b_log in Vim),
# dt_projs_bias, GroupMamba's stacked out_norm_{weight,bias}, Vim's position embedding and class token,
# PlainMamba's direction_Bs.
# (custom_keys match by substring: a key like 'D' would catch every name with a capital D.)
optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    paramwise_cfg=dict(
        _delete_=True,
        flat_decay_mult=0.,
        custom_keys={
            'A_log': dict(decay_mult=0.),
            'A_b_log': dict(decay_mult=0.),
            'dt_projs_bias': dict(decay_mult=0.),
            'out_norm': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'direction_Bs': dict(decay_mult=0.),
        }))
