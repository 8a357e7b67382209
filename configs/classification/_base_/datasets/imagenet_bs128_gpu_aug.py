# imagenet_bs128.py (the same folders, batches, sampler and evaluation) with decoding and augmentation on the
# model's device: the workers only read the files' bytes, and BatchAugmentDataPreprocessor decodes each batch
# (nvJPEG on CUDA) and applies the same recipe to it: RandomResizedCrop 224 (scale 0.08-1, bicubic, antialiased),
# flip, RandAugment rand-m9-mstd0.5-inc1 (timm's ops and magnitudes), random erasing 0.25 (timm's per-pixel normal
# noise after normalisation); test: shorter side to 256 bicubic, centre 224. For hosts whose CPU cores cannot keep
# up with the GPU. A recipe switches by naming this file instead of imagenet_bs128.py in its _base_.
_base_ = ['./imagenet_bs128.py']

# mmengine's Runner sets it as model.data_preprocessor
data_preprocessor = dict(
    _delete_=True,
    type='BatchAugmentDataPreprocessor',
    img_size=_base_.img_size,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    flip_prob=0.5,
    rand_augment='rand-m9-mstd0.5-inc1',
    erasing_prob=0.25,
    crop_pct=0.875,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    non_blocking=True,   # the labels are copied to the GPU without a stream synchronization each
)
train_pipeline = [dict(type='PackEncodedImage')]
test_pipeline = [dict(type='PackEncodedImage')]

# reading files is all a worker does; the files' bytes are decoded from host memory (nothing to pin)
train_dataloader = dict(num_workers=4, pin_memory=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=4, pin_memory=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
