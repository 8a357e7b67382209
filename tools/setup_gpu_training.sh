#!/usr/bin/env bash
# Prepare a CUDA machine for detection / segmentation / classification training with visionssm: mmcv with CUDA
# ops (built against the installed torch), the OpenMMLab stack and albumentations, then a check of mmcv.ops on a
# CUDA tensor and of the mm imports.
#
#   tools/setup_gpu_training.sh [PYTHON] [WHEEL_DIR]
#
# PYTHON defaults to python3 (an environment that already has torch with CUDA; timm and torchvision too).
# WHEEL_DIR: an offline machine's wheels and mmcv's sdist (mmcv-2.1.0.tar.gz), installed with --no-index; without
# it everything comes from the package index. A prebuilt mmcv wheel in WHEEL_DIR (one that tools/build_mmcv.sh
# built for the same torch, CUDA and GPU architecture; it caches them under ~/.cache/visionssm/wheels) is installed
# instead of building. visionssm itself is installed from this checkout (editable).
# MMCV=0: classification only (the `cls` extra: mmengine and albumentations), no mmcv, mmdet or mmseg: ready in
# seconds, where building mmcv takes minutes.
set -euo pipefail
MMCV=${MMCV:-1}
PY=${1:-python3}
[[ $PY == */* ]] || PY=$(command -v "$PY")
WHEELS=${2:-}
cd "$(dirname "$0")/.."
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible to torch"; print("[setup] torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name())'

if [[ -n $WHEELS ]]; then
    prebuilt=$(ls "$WHEELS"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
    # setuptools first: mmcv's setup.py needs pkg_resources (setuptools < 81)
    "$PY" -m pip install -q --no-index --no-deps $(ls "$WHEELS"/*.whl | grep -v '/mmcv-')
    if [[ $MMCV == 0 ]]; then
        echo "[setup] MMCV=0: classification only, mmcv not installed"
    elif [[ -n $prebuilt ]]; then
        echo "[setup] installing the prebuilt $(basename "$prebuilt")"
        "$PY" -m pip install -q --no-index --no-deps "$prebuilt"
    else
        MMCV_PIP_FLAGS="--no-index --no-deps" tools/build_mmcv.sh "$PY" "$(ls "$WHEELS"/mmcv-*.tar.gz | head -n 1)"
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        || { [[ -e visionssm/kernels ]] || ln -s ../kernels visionssm/kernels; }
elif [[ $MMCV == 0 ]]; then
    "$PY" -m pip install -q -e '.[cls]'
else
    tools/build_mmcv.sh "$PY"
    "$PY" -m pip install -q -e '.[det,seg,aug]'
fi
if [[ $MMCV == 0 ]]; then
    "$PY" -c 'import mmengine, albumentations, visionssm.mm; print("[setup] ok: classification; mmengine", mmengine.__version__, "albumentations", albumentations.__version__)'
    exit 0
fi
"$PY" - <<'PYEOF'
import torch, mmcv, mmdet, mmseg, mmengine, albumentations
import mmdet.models, mmseg.models  # noqa: F401  (need mmcv._ext)
from mmcv.ops import nms, RoIAlign
x = torch.rand(64, 4, device='cuda') * 100
boxes = torch.cat([x[:, :2], x[:, :2] + x[:, 2:] + 1], 1)
_, keep = nms(boxes, torch.rand(64, device='cuda'), 0.5)
assert keep.is_cuda and keep.numel() > 0
out = RoIAlign((7, 7), 1 / 8, 2)(torch.rand(2, 16, 64, 64, device='cuda'),
                                  torch.tensor([[0, 0, 0, 100, 100], [1, 8, 8, 200, 300]], device='cuda', dtype=torch.float))
assert out.shape == (2, 16, 7, 7) and out.is_cuda and torch.isfinite(out).all()
import visionssm.mm  # noqa: F401
print('[setup] ok: mmcv', mmcv.__version__, 'CUDA ops; mmengine', mmengine.__version__, 'mmdet', mmdet.__version__,
      'mmseg', mmseg.__version__, 'albumentations', albumentations.__version__)
PYEOF
