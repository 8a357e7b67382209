# Spatial-Mamba-S on ImageNet-1k: published top-1 84.6 (EdwardChasel/Spatial-Mamba README).
# Recipe as Spatial-Mamba-T with drop path 0.3 (MESA weight 1.5 in the official run; not reproduced).
_base_ = ['./spatialmamba-t_8xb128_in1k.py']

model = dict(backbone=dict(model_name='spatialmamba_small', drop_path_rate=0.3))
