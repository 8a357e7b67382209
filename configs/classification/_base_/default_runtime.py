# Runtime shared by the classification configs: the visionssm registry scope, logging, checkpoints, environment.
default_scope = 'visionssm'

default_hooks = dict(
    # the losses and the gradient norm stay on the GPU until the logger reads them: no host wait at every step
    runtime_info=dict(type='DeferredRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # keeps the latest and the best (by val top-1) checkpoint; Runner.save_checkpoint replaces files atomically
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
custom_hooks = [dict(type='LearningCurveHook')]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'

load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
