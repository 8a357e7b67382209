#!/usr/bin/env bash
# Build full mmcv (compiled ops) for the torch installed in the given venv, cache the wheel keyed by the torch
# version, and install it. PyPI ships mmcv 2.1 only as an sdist; torch >= 2.13 headers need C++20 while mmcv's
# setup.py hard-codes -std=c++14/17, and pip's own wheel cache ignores the torch version (docs/install.md).
set -euo pipefail
PY=${1:?usage: build_mmcv.sh PYTHON}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, but not resolved past the venv's symlink
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
torch_ver=$("$PY" -c 'import torch; print(torch.__version__)')
cache=${VISIONSSM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visionssm/wheels}/torch-${torch_ver}
wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "[build_mmcv] no cached wheel for torch $torch_ver: building mmcv $MMCV_VERSION from source (~17 min on 2 cores)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # setup.py imports pkg_resources (removed in setuptools 82; torch wants >= 77.0.3) and must see torch: no
    # build isolation, already for reading the sdist's metadata (without it _ext is also silently not built).
    "$PY" -m pip install -q 'setuptools>=77.0.3,<81' wheel ninja
    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work"
    tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
    src="$work/mmcv-$MMCV_VERSION"
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    mkdir -p "$cache"
    (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip wheel --no-build-isolation --no-deps -w "$cache" .)
    wheel=$(ls "$cache"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
fi
echo "[build_mmcv] installing $wheel"
"$PY" -m pip install -q "$wheel"
"$PY" -c 'import mmcv, mmcv.ops; from mmcv import _ext; print("[build_mmcv] mmcv", mmcv.__version__, "with compiled ops")'
