"""Layers shared across families."""
from .mlp import Mlp, act_linear
from .patch import ConvDownsample, ConvStem, PatchEmbed, PatchMerging, pad_to_even
from .ss2d import SS2D, InputDtypeLayerNorm, ScanLayer, full_precision, init_dt_bias, scan_out_dtype
