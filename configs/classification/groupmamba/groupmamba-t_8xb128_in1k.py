# GroupMamba-T on ImageNet-1k: published top-1 83.3 (Amshaker/GroupMamba README, groupmamba_tiny_ema.pth).
# Official recipe (classification/config.py, train.py, scripts): 300 epochs, batch 1024 (8x128), AdamW
# lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05, 20 warm-up epochs, cosine, drop path 0.05 (hard-coded in the
# official create_model), label smoothing 0.1, mixup 0.8 / cutmix 1.0, EMA 0.9999, clipping 5, AMP (--amp).
# Not reproduced: the official run adds DeiT hard distillation from RegNetY-16GF (alpha 0.5) through a second
# head; without a teacher expect a lower top-1.
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='groupmamba_tiny', drop_path_rate=0.05))
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
