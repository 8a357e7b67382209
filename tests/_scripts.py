"""The repository's scripts (``benchmarks/*.py``) imported by tests, which call their functions directly."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str, module_name: str = ''):
    """``benchmarks/<name>.py`` as a fresh module, registered in ``sys.modules`` under ``module_name`` (default
    ``benchmarks_<name>``) before it runs: dataclasses defined in a script look their module up there."""
    path = ROOT / 'benchmarks' / f'{name}.py'
    spec = importlib.util.spec_from_file_location(module_name or f'benchmarks_{name}', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
