# GroupMamba-S on ImageNet-1k: published top-1 83.9 (Amshaker/GroupMamba README, groupmamba_small_ema.pth).
# Recipe as GroupMamba-T (drop path 0.05 for every size in the official code; distillation not reproduced).
_base_ = ['./groupmamba-t_8xb128_in1k.py']

model = dict(backbone=dict(model_name='groupmamba_small'))
