# Vim-B (middle class token) on ImageNet-1k: published top-1 81.9 (hustvl/Vim README).
# No official training script for Vim-B was released (hustvl/Vim issue #13): this uses Vim-S's recipe
# (batch 512, AdamW 1e-3, weight decay 0.05, drop path 0.05, EMA 0.99996, fp32).
_base_ = ['./vim-s_8xb64_in1k.py']

model = dict(backbone=dict(model_name='vim_base'))
