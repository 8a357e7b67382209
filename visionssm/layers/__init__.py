"""Layers shared across families."""
from .mlp import Mlp, act_linear
from .patch import ConvDownsample, ConvStem, PatchEmbed, PatchMerging
from .ss2d import SS2D, InputDtypeLayerNorm, full_precision, init_dt_bias
