# Vim-Ti (middle class token) on ImageNet-1k: published top-1 76.1 (hustvl/Vim README, vim_t_midclstok_76p1acc.pth).
# Official recipe (vim/scripts/pt-vim-t.sh and the defaults of vim/main.py, the DeiT trainer): 300 epochs, batch
# 1024 (8x128), AdamW lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05 (none on norms, biases, 1-D parameters,
# pos_embed, cls_token), 5 warm-up epochs from 1e-6, per-epoch cosine to 1e-5, drop path 0.1, label smoothing 0.1,
# mixup 0.8 / cutmix 1.0, RandAugment m9, random erasing 0.25, EMA 0.99996, no gradient clipping, fp32 (no AMP).
# Not reproduced: DeiT's repeated augmentation (RASampler, 3 repeats).
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='vim_tiny', drop_path_rate=0.1))

lr = 1e-3
warmup_epochs = 5
max_epochs = 300
optim_wrapper = dict(
    _delete_=True,
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0,
                       custom_keys={'pos_embed': dict(decay_mult=0.0), 'cls_token': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, begin=0, end=warmup_epochs),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs),
]
# mmengine's momentum weighs the new weights: 1 - 0.99996
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=4e-5, priority='ABOVE_NORMAL'),
]
