# PlainMamba-L2 on ImageNet-1k: published top-1 81.6 / top-5 95.6 (ChenhongyiYang/PlainMamba README, l2.pth).
# Official recipe (plain_mamba_configs/plain_mamba_l2_in1k_300e.py): as L1 but 20 warm-up epochs, gradient norm
# clipped at 1, fp32 (no AMP runner), EMA of the weights (momentum 1e-4, evaluated and saved as the model), and weight
# decay on pos_embed, A_log and direction_Bs (this config, unlike L1's and L3's, exempts no SSM parameter).
# Not reproduced: the official EMA hook's momentum warm-up; D (1-D) is not decayed here (officially it is).
_base_ = ['./plainmamba-l1_8xb256_in1k.py']

model = dict(backbone=dict(model_name='plainmamba_l2', drop_path_rate=0.2))

lr = 2e-3
warmup_epochs = 20
max_epochs = 300
optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=lr * 1e-2, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
# mmengine's momentum weighs the new weights, as the official hook's
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
