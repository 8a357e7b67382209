"""visionssm: vision state-space backbones on one shared multi-route selective-scan kernel.

Importing the package registers every model with timm (``timm.create_model('vmamba_tiny_s1l8')``). The
MMDetection / MMSegmentation adapters live in ``visionssm.mm`` and are imported only on request.
"""
__version__ = '0.1.0.dev0'


def _source_checkout_kernels():
    # Installed, ``kernels/`` is the subpackage ``visionssm.kernels`` (pyproject.toml's package-dir mapping). Run
    # from a source checkout that is not installed (``python tools/...`` with the repository on sys.path), it sits
    # beside this package: give it the same name.
    import importlib.util
    import os
    import sys
    if 'visionssm.kernels' in sys.modules or importlib.util.find_spec('visionssm.kernels') is not None:
        return
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'kernels')
    init = os.path.join(root, '__init__.py')
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location('visionssm.kernels', init, submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules['visionssm.kernels'] = module
        spec.loader.exec_module(module)
        globals()['kernels'] = module   # the attribute an import of a subpackage sets on its parent


_source_checkout_kernels()

from . import models, ops  # noqa: E402
from .cuda_graph import GraphedModule
from .models import from_official
from .ops import selective_scan

__all__ = ['GraphedModule', 'from_official', 'selective_scan', 'models', 'ops', '__version__']
