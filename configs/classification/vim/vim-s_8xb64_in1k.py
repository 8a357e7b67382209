# Vim-S (middle class token) on ImageNet-1k: published top-1 80.5 (hustvl/Vim README, vim_s_midclstok_80p5acc.pth).
# Official recipe (vim/scripts/pt-vim-s.sh): as Vim-Ti but batch 512 (8x64), lr 1e-3 x 512/512 = 1e-3,
# drop path 0.05, weight decay 0.05; fp32, EMA 0.99996.
_base_ = ['./vim-t_8xb128_in1k.py']

model = dict(backbone=dict(model_name='vim_small', drop_path_rate=0.05))
train_dataloader = dict(batch_size=64)
auto_scale_lr = dict(base_batch_size=512)
