# Spatial-Mamba-B on ImageNet-1k: published top-1 85.3 (EdwardChasel/Spatial-Mamba README).
# Recipe as Spatial-Mamba-T with drop path 0.5 (MESA weight 2.0 in the official run; not reproduced).
_base_ = ['./spatialmamba-t_8xb128_in1k.py']

model = dict(backbone=dict(model_name='spatialmamba_base', drop_path_rate=0.5))
