"""Train with an mmengine config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
[--cfg-options k=v ...] [--launcher none|pytorch|slurm]`` (distributed: ``torchrun --nproc_per_node=N ...``)."""
import os
import sys

# Python puts this folder first on sys.path; its scripts (profile.py, test.py) must not shadow stdlib modules.
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))

from visionssm.mm.runner import train_main  # noqa: E402

if __name__ == '__main__':
    raise SystemExit(train_main())
