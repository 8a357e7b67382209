#!/usr/bin/env bash
# visionssm beside the official code of Vim, EfficientVMamba, GroupMamba, Spatial-Mamba and MambaVision, on one
# GPU machine in one command of at most 10 minutes, from the repository root:
#
#   bash benchmarks/official_h200.sh ROOT [DIR]
#
# ROOT: the official checkouts (see benchmarks/official_compare.py), with extensions already built into ROOT/_ext
# (`official_compare.py build`, e.g. on another machine with nvcc and the GPU machine's torch) or built here
# first; extensions that import are kept. MODELS (default: the T variants) picks the models. Writes DIR (default
# $OUT): env.txt, build.log, official.json, official.md (ours against official: img/s, peak GiB, params; with a
# kernel-time breakdown of one training step of each T model in the JSON).
set -uo pipefail
root=${1:?official checkouts folder}
dir=${2:-${OUT:?set OUT or pass an output directory}}
LIMIT=${LIMIT:-560}
MODELS=${MODELS:-vim_tiny groupmamba_tiny spatialmamba_tiny efficientvmamba_tiny mambavision_t}
mkdir -p "$dir"
source benchmarks/gpu_env.sh
python3 benchmarks/official_compare.py build "$root" --missing-only --jobs "$(nproc)" > "$dir/build.log" 2>&1
grep '^\[build\]' "$dir/build.log" | cut -c1-300
python3 benchmarks/official_compare.py measure "$root" --models $MODELS --profile \
    --time-budget $((LIMIT - SECONDS - 15)) --json "$dir/official.json" --md "$dir/official.md"
echo "[official_h200] done in ${SECONDS}s"
