# ImageNet-1k as an image folder (data/imagenet/{train,val}/<wnid>/*.JPEG), 128 images per GPU.
# Train: the DeiT/Swin augmentation (RandomResizedCrop 224 bicubic, flip, RandAugment rand-m9-mstd0.5-inc1,
# random erasing 0.25; mixup/cutmix live in the model). Test: resize to 256 (crop_pct 0.875) bicubic, centre 224.
# Workers decode and augment on the CPU; imagenet_bs128_gpu_aug.py does both on the model's device instead.
data_root = 'data/imagenet'
img_size = 224

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='Albumentations', transforms=[
        dict(type='RandomResizedCrop', size=(img_size, img_size), scale=(0.08, 1.0), interpolation='cubic'),
        dict(type='HorizontalFlip', p=0.5),
    ]),
    dict(type='RandAugment', config='rand-m9-mstd0.5-inc1', img_size=img_size),
    dict(type='Albumentations', transforms=[
        dict(type='Erasing', p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), fill='random'),
    ]),
    dict(type='PackClsInputs'),
]
# mmengine's Runner sets it as model.data_preprocessor: the ImageNet mean / std on 0-255 pixels; the labels go to
# the GPU as one copy; non_blocking: the batch is copied without a stream synchronization
data_preprocessor = dict(type='ClsDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         non_blocking=True)
test_pipeline = [
    dict(type='LoadImage'),
    dict(type='Albumentations', transforms=[
        dict(type='SmallestMaxSize', max_size=int(img_size / 0.875), interpolation='cubic'),
        dict(type='CenterCrop', height=img_size, width=img_size),
    ]),
    dict(type='PackClsInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,  # the batch's copy to the GPU then runs while the host goes on
    drop_last=True,  # mixup/cutmix pairs images within a batch: sizes must be even
    sampler=dict(type='DefaultSampler', shuffle=True),
    # one stacked image tensor; the batch leaves its worker as one buffer per dtype, not 256 tensors
    collate_fn=dict(type='visionssm.pack_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root, split='train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='visionssm.pack_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root, split='val', pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
