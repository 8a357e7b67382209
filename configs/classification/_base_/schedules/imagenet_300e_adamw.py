# The Swin/VMamba ImageNet-1k schedule: 300 epochs of AdamW at batch 1024 (8 GPUs x 128), the base lr 5e-4 per
# 512 images scaled linearly (1e-3), 20 warm-up epochs from 1e-6, then per-iteration cosine to 1e-5;
# weight decay 0.05 except on norms, biases and 1-D parameters; gradient norm clipped at 5.
# The official runs used fp16 AMP: train with --amp. On other GPU counts set auto_scale_lr.enable=True.
max_epochs = 300
warmup_epochs = 20
lr = 1e-3

optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    type='OptimWrapper',
    # fused: one kernel per step; under AMP the loss scaler hands it the overflow flag on the device instead of
    # reading it on the host (a wait for the GPU at every step)
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(base_batch_size=1024, enable=False)
