# vmamba-t-s1l8_8xb128_in1k.py with the input pipeline on the GPU (configs/classification/_base_/datasets/
# imagenet_bs128_gpu_aug.py): the same recipe and augmentation, decoded and augmented on the model's device.
_base_ = [
    '../_base_/models/imagenet_classifier.py',
    '../_base_/datasets/imagenet_bs128_gpu_aug.py',
    '../_base_/schedules/imagenet_300e_adamw.py',
    '../_base_/default_runtime.py',
]

model = dict(backbone=dict(model_name='vmamba_tiny_s1l8', drop_path_rate=0.2))
# mmengine's momentum weighs the new weights: 1 - 0.9999
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(type='EMAHook', ema_type='visionssm.ForeachExponentialMovingAverage', momentum=1e-4, priority='ABOVE_NORMAL'),
]
# each batch decoded and augmented one step ahead, in a thread (visionssm.mm.prefetch): the same batches as
# mmengine's EpochBasedTrainLoop, 9% more images/s on an H200 (benchmarks/results/h200-2026-12-06b/)
train_cfg = dict(type='PrefetchEpochBasedTrainLoop')
