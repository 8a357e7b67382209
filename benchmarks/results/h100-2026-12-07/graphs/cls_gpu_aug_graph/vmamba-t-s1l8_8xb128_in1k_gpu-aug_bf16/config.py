auto_scale_lr = dict(base_batch_size=1024, enable=False)
custom_hooks = [
    dict(type='LearningCurveHook'),
    dict(
        ema_type='visionssm.ForeachExponentialMovingAverage',
        momentum=0.0001,
        priority='ABOVE_NORMAL',
        type='EMAHook'),
    dict(type='visionssm.LossScaleHook'),
    dict(iters=5, start=85, type='visionssm.StepProfileHook'),
    dict(iters=40, start=45, type='visionssm.HostTimeHook'),
]
data_preprocessor = dict(
    crop_pct=0.875,
    erasing_prob=0.25,
    flip_prob=0.5,
    img_size=224,
    mean=[
        123.675,
        116.28,
        103.53,
    ],
    non_blocking=True,
    rand_augment='rand-m9-mstd0.5-inc1',
    ratio=(
        0.75,
        1.3333333333333333,
    ),
    scale=(
        0.08,
        1.0,
    ),
    std=[
        58.395,
        57.12,
        57.375,
    ],
    type='BatchAugmentDataPreprocessor')
data_root = 'data/imagenet'
default_hooks = dict(
    checkpoint=dict(
        interval=3,
        max_keep_ckpts=1,
        rule='greater',
        save_best='accuracy/top1',
        type='CheckpointHook'),
    logger=dict(interval=10, type='LoggerHook'),
    param_scheduler=dict(type='ParamSchedulerHook'),
    runtime_info=dict(type='DeferredRuntimeInfoHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    timer=dict(type='IterTimerHook'))
default_scope = 'visionssm'
env_cfg = dict(
    cudnn_benchmark=True,
    dist_cfg=dict(backend='nccl'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0))
img_size = 224
launcher = 'none'
load_from = None
log_level = 'INFO'
log_processor = dict(by_epoch=True, window_size=50)
lr = 0.001
max_epochs = 300
model = dict(
    backbone=dict(drop_path_rate=0.2, model_name='vmamba_tiny_s1l8'),
    cuda_graph=True,
    label_smoothing=0.1,
    mixup=dict(
        cutmix_alpha=1.0,
        mixup_alpha=0.8,
        mode='batch',
        prob=1.0,
        switch_prob=0.5),
    num_classes=1000,
    type='ImageClassifier')
optim_wrapper = dict(
    clip_grad=dict(max_norm=5.0),
    constructor='visionssm.GroupedOptimWrapperConstructor',
    dtype='bfloat16',
    optimizer=dict(
        betas=(
            0.9,
            0.999,
        ),
        eps=1e-08,
        fused=True,
        lr=0.001,
        type='AdamW',
        weight_decay=0.05),
    paramwise_cfg=dict(
        bias_decay_mult=0.0, flat_decay_mult=0.0, norm_decay_mult=0.0),
    type='AmpOptimWrapper')
param_scheduler = [
    dict(
        begin=0,
        by_epoch=True,
        convert_to_iter_based=True,
        end=20,
        start_factor=0.001,
        type='LinearLR'),
    dict(
        T_max=280,
        begin=20,
        by_epoch=True,
        convert_to_iter_based=True,
        end=300,
        eta_min=1e-05,
        type='CosineAnnealingLR'),
]
randomness = dict(deterministic=False, seed=0)
resume = False
test_cfg = dict(type='TestLoop')
test_dataloader = dict(
    batch_size=128,
    collate_fn=dict(type='visionssm.pack_collate'),
    dataset=dict(
        data_root='/tmp/tmp.qtuh78J90w/cls_gpu_aug_graph/data/imagenet',
        pipeline=[
            dict(type='PackEncodedImage'),
        ],
        split='val',
        type='ImageFolderDataset'),
    num_workers=4,
    persistent_workers=True,
    pin_memory=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
test_evaluator = dict(
    topk=(
        1,
        5,
    ), type='Accuracy')
test_pipeline = [
    dict(type='PackEncodedImage'),
]
train_cfg = dict(
    max_epochs=3, type='PrefetchEpochBasedTrainLoop', val_interval=3)
train_dataloader = dict(
    batch_size=128,
    collate_fn=dict(type='visionssm.pack_collate'),
    dataset=dict(
        data_root='/tmp/tmp.qtuh78J90w/cls_gpu_aug_graph/data/imagenet',
        pipeline=[
            dict(type='PackEncodedImage'),
        ],
        split='train',
        type='ImageFolderDataset'),
    drop_last=True,
    num_workers=8,
    persistent_workers=True,
    pin_memory=False,
    sampler=dict(shuffle=True, type='DefaultSampler'))
train_pipeline = [
    dict(type='PackEncodedImage'),
]
val_cfg = dict(type='ValLoop')
val_dataloader = dict(
    batch_size=128,
    collate_fn=dict(type='visionssm.pack_collate'),
    dataset=dict(
        data_root='/tmp/tmp.qtuh78J90w/cls_gpu_aug_graph/data/imagenet',
        pipeline=[
            dict(type='PackEncodedImage'),
        ],
        split='val',
        type='ImageFolderDataset'),
    num_workers=4,
    persistent_workers=True,
    pin_memory=False,
    sampler=dict(shuffle=False, type='DefaultSampler'))
val_evaluator = dict(
    topk=(
        1,
        5,
    ), type='Accuracy')
vis_backends = [
    dict(type='LocalVisBackend'),
]
visualizer = dict(
    type='Visualizer', vis_backends=[
        dict(type='LocalVisBackend'),
    ])
warmup_epochs = 20
work_dir = '/tmp/tmp.qtuh78J90w/cls_gpu_aug_graph/vmamba-t-s1l8_8xb128_in1k_gpu-aug_bf16'
