# The ImageNet-1k classifier every family's recipe shares: a registered backbone (set by the config), a linear head
# over 1000 classes, label smoothing 0.1, batch mixup 0.8 / cutmix 1.0 (each family's official recipe). The data
# preprocessor (normalisation, or decoding and augmentation on the device) comes with the dataset config, as the
# top-level `data_preprocessor` that mmengine's Runner puts into the model.
model = dict(
    type='ImageClassifier',
    backbone=dict(),
    num_classes=1000,
    label_smoothing=0.1,
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'),
)
