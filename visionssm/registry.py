"""The ``visionssm`` registry scope for mmengine (the mmpretrain pattern, notes/ecosystem.md §3.1).

Every registry here is a child of mmengine's root registry of the same name, so:
* configs with ``default_scope='visionssm'`` find our classes and everything mmengine registers (runners, loops,
  hooks, optimizers, schedulers) through the parent;
* mmdet / mmseg configs (``default_scope='mmdet'`` / ``'mmseg'``) name ours with the scope prefix,
  ``type='visionssm.VisionSSMBackbone'``; mmengine imports this module on seeing the prefix, and ``locations``
  imports ``visionssm.mm`` where the classes are registered. No ``custom_imports`` needed.

Importing ``visionssm`` itself never imports this module (mmengine is an optional dependency).
"""
from mmengine import registry as _root
from mmengine.registry import Registry

_LOCATIONS = ['visionssm.mm']


def _child(name: str, parent: Registry) -> Registry:
    return Registry(name, parent=parent, scope='visionssm', locations=_LOCATIONS)


RUNNERS = _child('runner', _root.RUNNERS)
RUNNER_CONSTRUCTORS = _child('runner constructor', _root.RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', _root.LOOPS)
HOOKS = _child('hook', _root.HOOKS)
LOG_PROCESSORS = _child('log_processor', _root.LOG_PROCESSORS)
OPTIMIZERS = _child('optimizer', _root.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', _root.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor', _root.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler', _root.PARAM_SCHEDULERS)
DATASETS = _child('dataset', _root.DATASETS)
DATA_SAMPLERS = _child('data sampler', _root.DATA_SAMPLERS)
TRANSFORMS = _child('transform', _root.TRANSFORMS)
MODELS = _child('model', _root.MODELS)
MODEL_WRAPPERS = _child('model_wrapper', _root.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child('weight initializer', _root.WEIGHT_INITIALIZERS)
METRICS = _child('metric', _root.METRICS)
EVALUATOR = _child('evaluator', _root.EVALUATOR)
TASK_UTILS = _child('task util', _root.TASK_UTILS)
VISUALIZERS = _child('visualizer', _root.VISUALIZERS)
VISBACKENDS = _child('vis_backend', _root.VISBACKENDS)
FUNCTIONS = _child('function', _root.FUNCTIONS)
