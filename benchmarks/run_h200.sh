#!/usr/bin/env bash
# The published throughput run on one H200 (one device command of at most 10 minutes), from the repository root:
#
#   bash benchmarks/run_h200.sh [DIR]
#
# Every T/S/B variant of the five families beside ConvNeXt-T, Swin-T, MambaOut-T (the hierarchical baselines) and
# DeiT-T/S (Vim's), bf16 autocast at 224² and batch 128: inference, and training (forward, cross-entropy,
# backward); then kernels/bench.py. Writes DIR (default $OUT): bench.json, kernel_bench.log, env.txt. Tables and
# plots afterwards, where matplotlib is:
#   python tools/benchmark.py --merge DIR/bench.json --out-dir benchmarks/results/<gpu>-<yyyy-mm>
set -uo pipefail
dir=${1:-${OUT:?set OUT or pass an output directory}}
LIMIT=${LIMIT:-560}
mkdir -p "$dir"
source benchmarks/gpu_env.sh
T='vmamba_tiny_s1l8 vim_tiny efficientvmamba_tiny groupmamba_tiny spatialmamba_tiny'
S='vmamba_small_s1l20 vim_small efficientvmamba_small groupmamba_small spatialmamba_small'
B='vmamba_base_s1l20 vim_base efficientvmamba_base groupmamba_base spatialmamba_base'
EXTRA='deit_tiny_patch16_224 deit_small_patch16_224'
budget=$((LIMIT - 90))   # leave time for the kernel table
python3 tools/benchmark.py --time-budget "$budget" --models $T $EXTRA $S $B --resolutions 224 --batch-sizes 128 \
    --measure infer,fwd_bwd:bf16@224 --gflops 224 --json "$dir/bench.json" \
    || echo "[run_h200] some measurements did not succeed: see the status column"
timeout $((LIMIT - SECONDS > 30 ? LIMIT - SECONDS : 30)) python3 kernels/bench.py 2>&1 | tee "$dir/kernel_bench.log"
echo "[run_h200] done in ${SECONDS}s"
