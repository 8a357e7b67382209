# MSVMamba-Tiny (master branch) on ImageNet-1k: published top-1 82.8, 33M params, 4.6G FLOPs
# (YuHengsss/MSVMamba README; configs/ms_vssm/vssm_tiny_224_ms.yaml).
# Official recipe (classification/config.py, main.py; the VMamba / Swin code base): 300 epochs, batch 1024
# (8x128), AdamW lr 5e-4 x 1024/512 = 1e-3, weight decay 0.05, 20 warm-up epochs, cosine to 1e-5, drop path 0.2,
# label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment m9, random erasing 0.25, gradient clipping 5, fp16 AMP,
# model EMA 0.9999 (main.py --model_ema, on by default).
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='msvmamba_tiny', drop_path_rate=0.2))
# mmengine's momentum weighs the new weights: 1 - 0.9999
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
