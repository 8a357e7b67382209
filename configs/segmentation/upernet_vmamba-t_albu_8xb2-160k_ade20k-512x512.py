# UperNet 160k, ADE20K 512x512, VMamba-T[s1l8] backbone, with albumentations augmentation through mmseg's Albu.
# Published: no number for this recipe; the plain recipe reports mIoU 47.9 / 48.8 (single / multi-scale)
# (official VMamba README, row "VMamba-T[s1l8] | UperNet@160k").
# albumentations 2.x transforms (Affine, not the deprecated ShiftScaleRotate). mmseg's Albu converts the image to
# RGB and back around them; the label map comes after reduce_zero_label, so geometric fill uses 255, the ignore index.
_base_ = ['./upernet_vmamba-t_8xb2-160k_ade20k-512x512.py']

albu_train_transforms = [
    dict(type='Affine', scale=(0.9, 1.1), rotate=(-10, 10), fill=0, fill_mask=255, p=0.5),
    dict(type='RandomBrightnessContrast', brightness_limit=0.2, contrast_limit=0.2, p=0.2),
    dict(type='ImageCompression', quality_range=(75, 95), p=0.2),
    dict(
        type='OneOf',
        transforms=[dict(type='Blur', blur_limit=3, p=1.0), dict(type='MedianBlur', blur_limit=3, p=1.0)],
        p=0.1),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Albu', transforms=albu_train_transforms),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
