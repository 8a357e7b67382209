# EfficientVMamba-S on ImageNet-1k: published top-1 78.7 (TerryPei/EfficientVMamba README).
# Recipe as EfficientVMamba-T (batch 2048, AdamW 2e-3, weight decay 0.04, drop path 0.1, EMA, clipping 1.0).
_base_ = ['./efficientvmamba-t_16xb128_in1k.py']

model = dict(backbone=dict(model_name='efficientvmamba_small'))
