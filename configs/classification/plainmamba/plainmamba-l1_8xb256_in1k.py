# PlainMamba-L1 on ImageNet-1k: published top-1 77.9 / top-5 94.0 (ChenhongyiYang/PlainMamba README, l1.pth).
# Official recipe (plain_mamba_configs/plain_mamba_l1_in1k_300e.py on MMClassification 0.x's Swin schedule): 300
# epochs, batch 2048 (8x256), AdamW lr 5e-4 x 2048/512 = 2e-3, weight decay 0.05 (none on norms, biases,
# pos_embed, A_log, D, direction_Bs), 15 linear warm-up epochs from lr x 1e-3, per-iteration cosine to lr x 1e-2,
# drop path 0.2, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment m9, random erasing 0.25, gradient norm
# clipped at 5, AMP (train with --amp), no EMA.
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='plainmamba_l1', drop_path_rate=0.2))
train_dataloader = dict(batch_size=256)

lr = 2e-3
warmup_epochs = 15
max_epochs = 300
optim_wrapper = dict(
    optimizer=dict(lr=lr),
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.0), 'A_log': dict(decay_mult=0.0),
                                    'direction_Bs': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=lr * 1e-2, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=2048)
