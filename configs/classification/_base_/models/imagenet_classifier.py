# The ImageNet-1k classifier every family's recipe shares: a registered backbone (set by the config), a linear head
# over 1000 classes, label smoothing 0.1, batch mixup 0.8 / cutmix 1.0 (each family's official recipe), and the
# ImageNet mean / std on 0-255 pixels.
model = dict(
    type='ImageClassifier',
    backbone=dict(),
    num_classes=1000,
    label_smoothing=0.1,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'),
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
)
