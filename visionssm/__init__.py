"""visionssm: vision state-space backbones on one shared multi-route selective-scan kernel.

Importing the package registers every model with timm (``timm.create_model('vmamba_tiny_s1l8')``). The
MMDetection / MMSegmentation adapters live in ``visionssm.mm`` and are imported only on request.
"""
__version__ = '0.1.0.dev0'

from . import models, ops
from .models import from_official
from .ops import selective_scan

__all__ = ['from_official', 'selective_scan', 'models', 'ops', '__version__']
