# EfficientVMamba-B on ImageNet-1k: published top-1 81.8 (TerryPei/EfficientVMamba README).
# Recipe as EfficientVMamba-T with batch 1024 (16x64), the log's lr 2e-3 unchanged.
_base_ = ['./efficientvmamba-t_16xb128_in1k.py']

model = dict(backbone=dict(model_name='efficientvmamba_base'))
train_dataloader = dict(batch_size=64)
auto_scale_lr = dict(base_batch_size=1024)
