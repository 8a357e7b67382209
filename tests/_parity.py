"""Where the parity fixtures (../shared/parity, made by running the official code) are, for every parity test."""
import os
from pathlib import Path

import pytest

_CANDIDATES = [os.environ.get('VISIONSSM_PARITY_DIR'), Path(__file__).resolve().parents[2] / 'shared' / 'parity',
               '/work/shared/parity']
PARITY = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), Path(_CANDIDATES[1]))
needs_parity = pytest.mark.skipif(
    not PARITY.is_dir(), reason=f'parity fixtures not found at {PARITY} (set VISIONSSM_PARITY_DIR)')
