# GroupMamba-B on ImageNet-1k: published top-1 84.5 (Amshaker/GroupMamba README).
# Recipe as GroupMamba-T (drop path 0.05 for every size in the official code; distillation not reproduced).
_base_ = ['./groupmamba-t_8xb128_in1k.py']

model = dict(backbone=dict(model_name='groupmamba_base'))
