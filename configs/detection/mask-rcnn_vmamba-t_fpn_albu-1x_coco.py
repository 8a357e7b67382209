# Mask R-CNN FPN 1x, COCO, VMamba-T[s1l8] backbone, with albumentations augmentation through mmdet's Albu.
# Published: no number for this recipe; the plain 1x recipe reports box AP 47.3, mask AP 42.7
# (official VMamba README, row "VMamba-T[s1l8] | MaskRCNN@1x").
# mmdet's albu_example, rewritten for albumentations 2.x: Affine instead of ShiftScaleRotate, ImageCompression with
# quality_range instead of the removed JpegCompression. mmdet's Albu hands albumentations BGR images.
_base_ = ['./mask-rcnn_vmamba-t_fpn_1x_coco.py']

albu_train_transforms = [
    dict(type='Affine', translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=0, interpolation=1, p=0.5),
    dict(type='RandomBrightnessContrast', brightness_limit=(0.1, 0.3), contrast_limit=(0.1, 0.3), p=0.2),
    dict(
        type='OneOf',
        transforms=[
            dict(type='RGBShift', r_shift_limit=10, g_shift_limit=10, b_shift_limit=10, p=1.0),
            dict(type='HueSaturationValue', hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=1.0),
        ],
        p=0.1),
    dict(type='ImageCompression', quality_range=(85, 95), p=0.2),
    dict(type='ChannelShuffle', p=0.1),
    dict(
        type='OneOf',
        transforms=[dict(type='Blur', blur_limit=3, p=1.0), dict(type='MedianBlur', blur_limit=3, p=1.0)],
        p=0.1),
]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),  # polygons become BitmapMasks, which Albu needs
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(
        type='Albu',
        transforms=albu_train_transforms,
        bbox_params=dict(
            type='BboxParams',
            format='pascal_voc',
            label_fields=['gt_bboxes_labels', 'gt_ignore_flags'],
            min_visibility=0.0,
            filter_lost_elements=True),
        keymap={'img': 'image', 'gt_masks': 'masks', 'gt_bboxes': 'bboxes'},
        skip_img_without_anno=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
