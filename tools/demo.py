"""``make demo``: train the digits config from scratch on CPU, evaluate, save the checkpoint, print a table and
write a learning-curve plot. ``python tools/demo.py [--config CFG] [--work-dir DIR] [--cfg-options k=v ...]``."""
import os
import sys

# Python puts this folder first on sys.path; its scripts (profile.py, test.py) must not shadow stdlib modules.
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
# Idle OpenMP threads sleep instead of spinning (read when torch loads): on a busy 2-core machine spinning threads
# take the cores from each other and a training step of the demo went from 0.8 s to 15 s.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from visionssm.mm.demo import demo_main  # noqa: E402

if __name__ == '__main__':
    raise SystemExit(demo_main())
