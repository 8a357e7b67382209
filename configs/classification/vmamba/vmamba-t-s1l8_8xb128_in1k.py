# VMamba-T[s1l8] (the paper's VMamba-T) on ImageNet-1k: published top-1 82.6
# (MzeroMiko/VMamba README and assets/performance.md, checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth).
# Official recipe (classification/config.py, main.py, configs/vssm/vmambav2v_tiny_224.yaml): 300 epochs, batch
# 1024 (8x128), AdamW lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05, 20 warm-up epochs (from 1e-6), cosine to
# 1e-5, drop path 0.2, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment m9, random erasing 0.25,
# EMA 0.9999, gradient clipping 5, fp16 AMP (--amp).
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='vmamba_tiny_s1l8', drop_path_rate=0.2))
# mmengine's momentum weighs the new weights: 1 - 0.9999
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
