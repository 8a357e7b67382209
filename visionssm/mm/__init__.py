"""mmengine / MMDetection / MMSegmentation frontends: everything registered in the ``visionssm`` scope.

Needs the ``det``/``seg`` extras (mmengine, full mmcv); the core package never imports this.
"""
from ..registry import MODELS  # noqa: F401  (creates the scope before the modules below register into it)
from . import backbone  # noqa: F401
from . import batch_augment, classification, collate, datasets, hooks, metrics, optim, runner, transforms  # noqa: F401
