#!/usr/bin/env bash
# Multi-GPU scaling of training, on a machine with at least 2 GPUs prepared by tools/setup_gpu_training.sh:
#
#   bash benchmarks/dist_scaling.sh DIR
#
# VMamba-T's ImageNet recipe (configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k.py) and VMamba-T Mask R-CNN 1x
# (configs/detection/mask-rcnn_vmamba-t_fpn_1x_coco.py), each for ITERS iterations on 1 and on 2 GPUs through
# tools/dist_train.sh (the 1-GPU run too: DDP with one process): same seed, same batch per GPU (the recipes' 128 and
# 2), fp16 AMP as released, on synthetic data written to DIR/data. Writes DIR/dist_scaling.json and
# DIR/dist_scaling.md: images/s, scaling efficiency (img/s on 2 GPUs / (2 x img/s on 1 GPU)), peak memory per GPU
# and the loss curves; each run's log is DIR/runs/<task>_<n>gpu.log (benchmarks/dist_scaling.py says how the configs
# and numbers are made).
#
# Environment: ITERS (200), GPUS ("1 2"), TASKS ("cls det"), WORKERS (8 dataloader workers per GPU), CLS_BATCH
# (128), DET_BATCH (2), AMP (1; 0 for fp32), CLS_OPTIONS / DET_OPTIONS (more --cfg-options for one task),
# PREPARE_ARGS (more arguments of `dist_scaling.py prepare`, e.g. the data sizes), PYTHON (python3), and ALLOW_CPU=1
# to run without GPUs (processes on gloo, to check the script with tiny models and data; its numbers mean nothing;
# AMP=0 there for det, whose CPU nms takes no bf16).
set -uo pipefail
out=${1:?usage: bash benchmarks/dist_scaling.sh DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # before moving to the repository root
ITERS=${ITERS:-200}
GPUS=${GPUS:-1 2}
TASKS=${TASKS:-cls det}
PYTHON=${PYTHON:-python3}
export PYTHON PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=$(printf '%s\n' $GPUS | sort -n | tail -1)
have=$("$PYTHON" -c 'import torch, visionssm.mm; print(torch.cuda.device_count())') || exit 1
if (( have < need )) && [[ ${ALLOW_CPU:-0} != 1 ]]; then
    echo "[dist_scaling] needs $need GPUs, found $have (set GPUS, or ALLOW_CPU=1 to check the script on a CPU)" >&2
    exit 1
fi
amp=(); [[ ${AMP:-1} == 1 ]] && amp=(--amp)

"$PYTHON" benchmarks/dist_scaling.py prepare "$out" --iters "$ITERS" --workers "${WORKERS:-8}" \
    --cls-batch "${CLS_BATCH:-128}" --det-batch "${DET_BATCH:-2}" ${PREPARE_ARGS:-} || exit 1
mkdir -p "$out/runs"
for task in $TASKS; do
    for n in $GPUS; do
        run="$out/runs/${task}_${n}gpu"
        options="${task^^}_OPTIONS"
        rm -rf "$run"
        echo "[dist_scaling] $task on $n GPU(s): $run.log"
        tools/dist_train.sh "$out/configs/$task.py" "$n" --work-dir "$run" "${amp[@]}" \
            --cfg-options "experiment_name=${task}_${n}gpu" ${!options:-} >"$run.log" 2>&1
        echo $? >"$run.rc"
        [[ $(cat "$run.rc") == 0 ]] || { echo "[dist_scaling] failed, the end of its log:"; tail -n 20 "$run.log"; }
    done
done
"$PYTHON" benchmarks/dist_scaling.py report "$out"
