"""mmengine / MMDetection / MMSegmentation frontends: everything registered in the ``visionssm`` scope.

Needs mmengine (the ``cls`` extra: classification training); detection and segmentation need the ``det`` / ``seg``
extras (full mmcv). The core package never imports this.
"""
from ..registry import MODELS  # noqa: F401  (creates the scope before the modules below register into it)
from . import backbone  # noqa: F401
from . import (batch_augment, classification, collate, datasets, hooks, metrics, optim, prefetch, runner,  # noqa: F401
               transforms)
