# Spatial-Mamba-T on ImageNet-1k: published top-1 83.5 (EdwardChasel/Spatial-Mamba README).
# Official recipe (classification/config.py, main.py, configs): the Swin/VMamba pipeline, 300 epochs, batch 1024
# (8x128), AdamW lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05, 20 warm-up epochs, cosine, drop path 0.2, label
# smoothing 0.1, mixup 0.8 / cutmix 1.0, EMA, clipping 5, AMP (--amp).
# Not reproduced: MESA (self-distillation from the EMA model, weight 1.0 from 25% of the epochs).
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='spatialmamba_tiny', drop_path_rate=0.2))
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
