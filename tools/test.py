"""Evaluate a checkpoint with an mmengine config: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
[--cfg-options k=v ...] [--launcher none|pytorch|slurm]``."""
import os
import sys

# Python puts this folder first on sys.path; its scripts (profile.py, test.py) must not shadow stdlib modules.
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))

from visionssm.mm.runner import test_main  # noqa: E402

if __name__ == '__main__':
    raise SystemExit(test_main())
