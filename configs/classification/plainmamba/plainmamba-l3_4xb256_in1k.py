# PlainMamba-L3 on ImageNet-1k: published top-1 82.3 / top-5 95.9 (ChenhongyiYang/PlainMamba README, l3.pth).
# Official recipe (plain_mamba_configs/plain_mamba_l3_in1k_300e.py): batch 1024 (4x256), AdamW lr 5e-4 x 1024/512
# = 1e-3, weight decay 0.05 (none on norms, biases, pos_embed, A_log, D, direction_Bs), 20 warm-up epochs, cosine to
# lr x 1e-2, drop path 0.4, gradient norm clipped at 1, fp32, EMA of the weights (momentum 1e-4).
# Not reproduced: the official EMA hook's momentum warm-up and its tenfold momentum from epoch 250.
_base_ = ['./plainmamba-l1_8xb256_in1k.py']

model = dict(backbone=dict(model_name='plainmamba_l3', drop_path_rate=0.4))

lr = 1e-3
warmup_epochs = 20
max_epochs = 300
optim_wrapper = dict(optimizer=dict(lr=lr), clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=lr * 1e-2, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=1024)
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
