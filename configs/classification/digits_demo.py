# The embedded demo (`make demo`): a narrow VMamba (1.5M parameters) trained from scratch on scikit-learn's 8x8
# handwritten digits, rendered as 32x32 RGB, with a stratified 80/20 split (1,437 train / 360 val images).
# Target: >= 95% val top-1 in under 10 minutes on a 2-core CPU. Measured (tools/demo.py, load average 2.7-4.2 from
# other jobs): 30 epochs in 4.3 min, val top-1 100.0% (95% is passed at epoch 4-7).
_base_ = ['./_base_/default_runtime.py']

img_size = 32
model = dict(
    type='ImageClassifier',
    # test_vmamba's four stages at width 32: 8x8 tokens after the stem, 1x1 in the last stage
    backbone=dict(model_name='test_vmamba', dims=32, drop_path_rate=0.1),
    num_classes=10,
    label_smoothing=0.1,
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3),
)

# Digits are not mirror-symmetric: small shifts, scalings and rotations only.
train_pipeline = [
    dict(type='Albumentations', transforms=[
        dict(type='Affine', translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-10, 10), p=0.8),
    ]),
    dict(type='PackClsInputs'),
]
test_pipeline = [dict(type='PackClsInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,  # 32x32 augmentation is cheap; workers would compete with the model for the two cores
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='DigitsDataset', split='train', img_size=img_size, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='DigitsDataset', split='val', img_size=img_size, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

max_epochs = 30
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    # one parameter group per set of options, not one per parameter (host time of every optimizer step)
    constructor='visionssm.GroupedOptimWrapperConstructor',
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=2, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 2, eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs,
         convert_to_iter_based=True),
]

default_hooks = dict(logger=dict(interval=10))
