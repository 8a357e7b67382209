#!/usr/bin/env bash
# The H100 throughput run (benchmarks/README.md), in parts of one device command each (10 minutes at most):
#
#   bash benchmarks/run_h100.sh 1 [DIR]    # inference: fp32 / tf32 / bf16 at 224, bf16 latency, bf16 at 512 and 1024
#   bash benchmarks/run_h100.sh 2 [DIR]    # training at 224 (bf16 fwd+bwd and with AdamW); VMamba-T compiled
#   bash benchmarks/run_h100.sh 3 [DIR]    # extras: fp32 / tf32 training, channels_last, compiled scaling
#
# Run from the repository root on the GPU machine. Each part writes its JSON files into DIR (default $OUT) and
# ends within LIMIT seconds (default 570), its install included: every step gets a time budget from what is left,
# and a step cut short keeps the measurements it made. Merge afterwards, where matplotlib is:
#   python tools/benchmark.py --merge DIR/part*.json --out-dir benchmarks/results/h100
set -uo pipefail

part=${1:-}
if [[ $part != [123] ]]; then echo "usage: run_h100.sh 1|2|3 [DIR]" >&2; exit 2; fi
dir=${2:-${OUT:?set OUT or pass an output directory}}
LIMIT=${LIMIT:-570}
mkdir -p "$dir"
export PYTHONUNBUFFERED=1

# The machine has torch, triton and timm but not visionssm, and no network. The editable install maps kernels/ to
# visionssm.kernels (pyproject's package-dir), which PYTHONPATH alone would not; where pip cannot build it (an old
# setuptools without bdist_wheel), a link in this throw-away copy of the tree does the same.
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    echo "[run_h100] pip could not install visionssm: using visionssm/kernels -> kernels and PYTHONPATH"
    [[ -e visionssm/kernels ]] || ln -s ../kernels visionssm/kernels
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch, triton, timm, visionssm.kernels.triton_scan; \
print('[run_h100]', torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__, \
'timm', timm.__version__)" || exit 1

# Seconds left for a step: what remains of LIMIT less 20 s (last JSON write, GFLOPs still being counted), at most $1.
budget() { local left=$((LIMIT - SECONDS - 20)); echo $((left < $1 ? left : $1)); }
bench() {
    local b
    b=$(budget "$1"); shift
    if ((b < 15)); then echo "[run_h100] no time left for: $*"; return; fi
    echo "[run_h100] ${SECONDS}s: $* (budget ${b}s)"
    python3 tools/benchmark.py --time-budget "$b" "$@" \
        || echo "[run_h100] some measurements did not succeed: see the status column"
}

T='vmamba_tiny_s1l8 vim_tiny efficientvmamba_tiny groupmamba_tiny spatialmamba_tiny'
BASELINES='convnext_tiny swin_tiny_patch4_window7_224 mambaout_tiny'
S='vmamba_small_s1l20 vim_small efficientvmamba_small groupmamba_small spatialmamba_small'
B='vmamba_base_s1l20 vim_base efficientvmamba_base groupmamba_base spatialmamba_base'
# smallest first: a step cut short by its budget loses the base models, not the comparison with the baselines
ALL="$T $BASELINES $S $B"

case $part in
1)
    bench 550 --models $ALL --resolutions 224,512,1024 --batch-sizes 128,32,8 \
        --measure infer:fp32,tf32,bf16@224 latency:bf16@224 infer:bf16@512,1024 --json "$dir/part1.json"
    ;;
2)
    bench 330 --models $ALL --resolutions 224 --batch-sizes 128 --measure fwd_bwd,train:bf16@224 \
        --json "$dir/part2_train.json"
    # compilation takes minutes: VMamba-T only (first_iter_s holds the compile time); CUDA-graph replay, which
    # takes the host's launch overhead off the compiled step (kernels/README.md, "Session 7")
    bench 220 --models vmamba_tiny_s1l8 --no-baselines --compile-mode reduce-overhead --resolutions 224 \
        --batch-sizes 128 --repeats 9 --measure fwd_bwd,train,infer:bf16@224 --json "$dir/part2_compile.json"
    ;;
3)
    # the default compile mode, then our models in channels_last (the baselines' convolutional ones already are)
    bench 150 --models vmamba_tiny_s1l8 --no-baselines --compile --resolutions 224 --batch-sizes 128 \
        --measure fwd_bwd,train,infer:bf16@224 --json "$dir/part3_compile_default.json"
    bench 120 --models $T --no-baselines --channels-last all --resolutions 224 --batch-sizes 128 \
        --measure infer,fwd_bwd:bf16@224 --json "$dir/part3_channels_last.json"
    # training without autocast, in whatever time is left
    bench 250 --models $T $BASELINES --resolutions 224 --batch-sizes 128 --measure fwd_bwd:fp32,tf32@224 \
        --json "$dir/part3_fp32_train.json"
    ;;
esac
echo "[run_h100] part $part done in ${SECONDS}s"
