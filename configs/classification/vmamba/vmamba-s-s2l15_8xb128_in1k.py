# VMamba-S[s2l15] (the paper's VMamba-S) on ImageNet-1k: published top-1 83.6
# (MzeroMiko/VMamba README, checkpoint vssm_small_0229_ckpt_epoch_222.pth; configs/vssm/vmambav2_small_224.yaml).
# Recipe as VMamba-T (batch 1024, AdamW 1e-3, 300 epochs, EMA, AMP) with drop path 0.3.
_base_ = ['./vmamba-t-s1l8_8xb128_in1k.py']

model = dict(backbone=dict(model_name='vmamba_small_s2l15', drop_path_rate=0.3))
