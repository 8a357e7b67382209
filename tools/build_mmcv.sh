#!/usr/bin/env bash
# Build full mmcv (compiled ops; CUDA ops too where torch sees a GPU) for the torch of the given Python, cache the
# wheel keyed by the torch version (and CUDA version and GPU architecture for CUDA builds), install it and check
# the ops.
#
#   tools/build_mmcv.sh PYTHON [SDIST]      # SDIST: a local mmcv-2.1.0.tar.gz (offline machines); else from PyPI
#
# PyPI ships mmcv 2.1 only as an sdist (OpenMMLab's prebuilt wheels stop at torch 2.1). Its setup.py hard-codes
# -std=c++14/17, while torch >= 2.13 headers need C++20 (torch 2.x before that: C++17); pip's own wheel cache
# ignores the torch version; and the compiler must link libstdc++ dynamically (tools/cxx_for_extensions.sh picks
# it). Environment: MMCV_VERSION (2.1.0), MAX_JOBS (all cores), VISIONSSM_WHEEL_CACHE, TORCH_CUDA_ARCH_LIST
# (default: the visible GPU's), MMCV_CPU_ONLY=1 (no CUDA ops even on a GPU machine), MMCV_PIP_FLAGS (extra flags
# for installing the wheel), CXX / CC (the compilers, when they link libstdc++ dynamically).
set -euo pipefail
PY=${1:?usage: build_mmcv.sh PYTHON [SDIST]}
SDIST=${2:-}
[[ $PY == */* ]] || PY=$(command -v "$PY")  # a bare name: the one on PATH
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, but not resolved past the venv's symlink
[[ -z $SDIST ]] || SDIST="$(cd "$(dirname "$SDIST")" && pwd)/$(basename "$SDIST")"
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
read -r torch_ver std cuda arch < <("$PY" - <<'PYEOF'
import os, torch
major, minor = (int(p) for p in torch.__version__.split('+')[0].split('.')[:2])
cuda = torch.cuda.is_available() and os.environ.get('MMCV_CPU_ONLY', '0') != '1'
arch = os.environ.get('TORCH_CUDA_ARCH_LIST') or ('%d.%d' % torch.cuda.get_device_capability() if cuda else '-')
# the standard torch's own cpp_extension compiles with: C++20 from torch 2.13, C++17 before
print(torch.__version__, 'c++20' if (major, minor) >= (2, 13) else 'c++17',
      torch.version.cuda if cuda else '-', arch.replace(' ', '_'))
PYEOF
)
key=torch-${torch_ver}
[[ $cuda == - ]] || key=${key}-cuda${cuda}-sm${arch}
cache=${VISIONSSM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visionssm/wheels}/${key}
wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    jobs=${MAX_JOBS:-$(nproc)}
    echo "[build_mmcv] no cached wheel for $key: building mmcv $MMCV_VERSION (${std}, CUDA ${cuda}, arch ${arch}," \
         "$jobs jobs; ~17 min on 2 cores for the CPU ops, ~5 min on 16 cores with CUDA ops)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # setup.py imports pkg_resources (removed in setuptools 82; torch wants >= 77.0.3) and must see torch: no
    # build isolation, already for reading the sdist's metadata (without it _ext is also silently not built).
    if ! "$PY" -c 'import pkg_resources' 2>/dev/null; then "$PY" -m pip install -q 'setuptools>=77.0.3,<81' wheel; fi
    "$PY" -m pip install -q ninja 2>/dev/null || true
    if [[ -z $SDIST ]]; then
        "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
        SDIST="$work/mmcv-$MMCV_VERSION.tar.gz"
    fi
    tar -xzf "$SDIST" -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    sed -i -E "s/-std=c\+\+1[47]/-std=${std}/g" "$src/setup.py"
    compilers=$("$(dirname "$0")/cxx_for_extensions.sh")
    read -r cxx cc <<< "$compilers"
    cuda_env=()
    [[ $cuda == - ]] || cuda_env=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${arch//_/ }")
    (cd "$src" && env MMCV_WITH_OPS=1 MAX_JOBS="$jobs" CXX="$cxx" CC="$cc" "${cuda_env[@]}" \
        "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" .)
    wheel=$(ls "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
    built=1
fi
echo "[build_mmcv] installing $wheel"
# shellcheck disable=SC2086  (MMCV_PIP_FLAGS: e.g. "--no-index --no-deps" on an offline machine)
"$PY" -m pip install -q ${MMCV_PIP_FLAGS:-} "$wheel"
# the check runs in its own process: a wheel that crashes it (a segfault in the compiled ops) is reported, not cached
if ! "$PY" - <<'PYEOF'
import mmcv, torch
from mmcv import _ext  # noqa: F401  (the compiled ops)
from mmcv.ops import nms, roi_align
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
scores = torch.tensor([0.9, 0.8, 0.7])
devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() and mmcv.ops.get_compiling_cuda_version() != 'not available' else [])
for dev in devices:
    _, keep = nms(boxes.to(dev), scores.to(dev), iou_threshold=0.5)
    assert keep.tolist() == [0, 2], keep
    feat = torch.arange(16., device=dev).view(1, 1, 4, 4)
    out = roi_align(feat, torch.tensor([[0., 0., 0., 4., 4.]], device=dev), (2, 2), 1.0, 2, 'avg', True)
    assert out.shape == (1, 1, 2, 2) and torch.isfinite(out).all()
print('[build_mmcv] mmcv', mmcv.__version__, 'with compiled ops, checked on', ', '.join(devices))
PYEOF
then
    if [[ -n ${built:-} ]]; then
        mkdir -p "$cache/rejected" && cp "$wheel" "$cache/rejected/"
        echo "[build_mmcv] the freshly built $wheel does not work with this torch (the check above failed or" \
             "crashed); it is not cached, but kept for inspection in $cache/rejected" >&2
    else   # a wheel cached before (by an older build script, say): drop it, so the next run builds anew
        rm -f "$wheel"
        echo "[build_mmcv] the cached $wheel does not work with this torch (the check above failed or crashed);" \
             "removed it from the cache: run again to build anew" >&2
    fi
    "$PY" -m pip uninstall -q -y mmcv >&2 || true
    exit 1
fi
if [[ -n ${built:-} ]]; then
    mkdir -p "$cache" && cp "$wheel" "$cache/" && echo "[build_mmcv] cached in $cache"
fi
