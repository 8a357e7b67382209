#!/usr/bin/env bash
# Training from the configs on one GPU machine, from the repository root (all parts take about 20 minutes on an H100;
# a device command may take 10: pick some with PARTS and LIMIT):
#
#   bash benchmarks/train_h200.sh [DIR] [WHEEL_DIR]
#
# WHEEL_DIR (default .whl): the offline wheels of tools/setup_gpu_training.sh, with an mmcv wheel already built
# for the machine's torch / CUDA / GPU (tools/build_mmcv.sh; without one, mmcv is built first, about 5 minutes on
# 16 cores; PARTS of classification alone need no mmcv). Then, each on synthetic data with the config's own pipeline (benchmarks/train_gpu.py):
#   - Mask R-CNN 1x, VMamba-T beside mmdet's Swin-T, batch 2, fp16 AMP, 300 iterations, then tools/test.py;
#   - UperNet 512², VMamba-T beside mmseg's Swin-T, batch 2, fp16 AMP, 300 iterations, then tools/test.py; then
#     VMamba-T's UperNet with its backbone replayed as CUDA graphs (part seg_graph: model.backbone.cuda_graph=True);
#   - the VMamba-T ImageNet recipe (RandAugment, erasing, Mixup/CutMix, EMA), bf16, batch 128, beside the bare
#     backbone's training step: with the host's data pipeline (15 workers; part cls), with the pipeline on the GPU
#     (part cls_gpu: the _gpu-aug recipe, nvJPEG decode and batched augmentation one step ahead in a thread), that
#     recipe through mmengine's plain loop (part cls_gpu_plain: the A/B of PrefetchEpochBasedTrainLoop), with its
#     backbone's forward and backward replayed as CUDA graphs (part cls_graph: model.cuda_graph=True, beside the
#     eager bare step), and with its backbone compiled (part cls_compiled: model.compile_backbone=True, beside the
#     compiled bare step);
#   - while time remains: both data pipelines alone (benchmarks/data_pipeline.py), then every family's T detection and
#     segmentation config in fp16 and bf16 (part families, below).
# PARTS picks some of them (det seg seg_graph cls cls_gpu cls_gpu_plain cls_graph cls_compiled pipeline families,
# the default: all, in this order);
# LIMIT (default 575) is the
# seconds the whole script may take; PROFILE (default 5) the iterations of each run that StepProfileHook profiles.
# Measured on an H100 with a prebuilt mmcv wheel: setup 30 s, det 290 s, seg 240 s, cls (host pipeline) about 190 s
# for 61 iterations before its validation and bare benchmark (the first epoch compiles and warms up; it now runs
# 93, three epochs of the synthetic folder, for five steady logged windows).
# Writes DIR (default $OUT): log.txt and train.tgz (every run's JSON, markdown, logs and generated config).
set -u
dir=${1:-${OUT:?set OUT or pass an output directory}}
wheels=${2:-.whl}
LIMIT=${LIMIT:-575}
PARTS=" ${PARTS:-det seg seg_graph cls cls_gpu cls_gpu_plain cls_graph cls_compiled pipeline families} "
part() { [[ "$PARTS" == *" $1 "* ]]; }
mkdir -p "$dir"
export PYTHONUNBUFFERED=1
LOG=$dir/log.txt; R=$(mktemp -d)
mmcv=0; for p in det seg seg_graph families; do part $p && mmcv=1; done   # classification needs no mmcv (and no build)
MMCV=$mmcv bash tools/setup_gpu_training.sh python3 "$wheels" > "$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
echo "== setup done (${SECONDS}s)" >> "$LOG"
# run LIMIT_S ARGS...: one benchmarks/train_gpu.py call, cut to the time left; each of its runs (training, then
# tools/test.py and, for classification, the bare benchmark) gets an equal share (--time-limit), so a slow first run
# leaves the baseline its time and a cut run still reports its logged iterations; PROFILE iterations of each run are
# profiled (0: none)
# pack: every run's reports so far into DIR/train.tgz, after each run, so that a command cut by the machine's time
# limit still returns the runs that finished
pack() { (cd "$R" && find . \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name 'config.py' \) \
             -not -path '*/data/*' | tar czf "$dir/train.tgz.part" -T -) && mv "$dir/train.tgz.part" "$dir/train.tgz"; }
run() { local lim=$1; shift; local left=$((LIMIT - SECONDS)); (( left < 45 )) && { echo "== skipped $1" >> "$LOG"; return; }
        local t=$(( lim < left ? lim : left )) n=0 a; for a in "$@"; do [[ $a =~ ^(det|seg|cls): ]] && n=$((n + 1)); done
        timeout $t python3 benchmarks/train_gpu.py "$@" --time-limit $(( (t - 15) / n )) \
            --profile "${PROFILE:-5}" >> "$LOG" 2>&1
        echo "== $1 done (${SECONDS}s)" >> "$LOG"; pack; }
part det && run ${DET_S:-330} det:configs/detection/mask-rcnn_vmamba-t_fpn_1x_coco.py:fp16 \
    det:mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py:fp16 --out "$R/det" --iters 300
part seg && run ${SEG_S:-240} seg:configs/segmentation/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py:fp16 \
    seg:mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py:fp16 --out "$R/seg" --iters 300
part seg_graph && run ${SEG_GRAPH_S:-150} seg:configs/segmentation/upernet_vmamba-t_8xb2-160k_ade20k-512x512.py:fp16 \
    --out "$R/seg_graph" --iters 300 --cfg-options model.backbone.cuda_graph=True
CLS=configs/classification/vmamba/vmamba-t-s1l8_8xb128_in1k
{ part cls || part cls_gpu || part cls_gpu_plain || part cls_graph || part cls_compiled || part pipeline; } && python3 tools/make_synthetic_data.py "$R/cls/data" --tasks cls --train-per-class 4 \
    >> "$LOG" 2>&1
part cls && run ${CLS_S:-240} cls:$CLS.py:bf16 --out "$R/cls" --iters 90 --workers 15
part cls_gpu && run ${CLS_GPU_S:-240} cls:${CLS}_gpu-aug.py:bf16 --out "$R/cls_gpu_aug" --iters 90 --workers 8
part cls_gpu_plain && run ${CLS_GPU_PLAIN_S:-130} cls:${CLS}_gpu-aug.py:bf16 --out "$R/cls_gpu_aug_plain" --iters 90 \
    --workers 8 --no-bare --cfg-options train_cfg.type=EpochBasedTrainLoop
part cls_graph && run ${CLS_GRAPH_S:-200} cls:${CLS}_gpu-aug.py:bf16 --out "$R/cls_gpu_aug_graph" --iters 90 \
    --workers 8 --cfg-options model.cuda_graph=True
part cls_compiled && run ${CLS_COMPILED_S:-240} cls:${CLS}_gpu-aug.py:bf16 --out "$R/cls_gpu_aug_compiled" --iters 90 \
    --workers 8 --cfg-options model.compile_backbone=True
pipeline() { local left=$((LIMIT - SECONDS)); (( left < 45 )) && return
             timeout $(( 40 < left ? 40 : left )) python3 benchmarks/data_pipeline.py "$@" >> "$LOG" 2>&1; }
part pipeline && pipeline $CLS.py --data-root "$R/cls/data/imagenet" --workers 8 15 --batches 10 --json "$R/cls/data_pipeline.json"
part pipeline && pipeline ${CLS}_gpu-aug.py --data-root "$R/cls/data/imagenet" --workers 4 8 --batches 10 \
    --json "$R/cls_gpu_aug/data_pipeline.json"
# families: every family's T detection and segmentation config in fp16 and bf16, 300 iterations each, FAMILY_JOBS
# (default 8) at once on the one GPU, 2 data workers each: whether each trains without a non-finite loss or a
# collapsing fp16 loss scale (no evaluation afterwards: the time goes to the iterations). Concurrent runs share the
# GPU and the host: their s/iter are no speed comparison.
# FAMILIES (a regular expression, default all) picks configs; FAMILY_RUN_S (default 360) caps each run's seconds, so
# that the queue moves on (12 detection runs at once reached 126-318 iterations in 342 s on an H100).
D=configs/detection S=configs/segmentation U=8xb2-160k_ade20k-512x512
FAMILY_RUNS=(det:$D/mask-rcnn_efficientvmamba-t_fpn_1x_coco.py det:$D/mask-rcnn_groupmamba-t_fpn_1x_coco.py
    det:$D/mask-rcnn_spatialmamba-t_fpn_1x_coco.py det:$D/msvmamba/mask-rcnn_msvmamba-t_fpn_1x_coco.py
    det:$D/mask-rcnn_vmamba-t_fpn_1x_coco.py det:$D/retinanet_vmamba-t_fpn_1x_coco.py
    det:$D/retinanet_efficientvmamba-t_fpn_1x_coco.py det:$D/plainmamba/mask-rcnn_plainmamba-adapter-l1_fpn_1x_coco.py
    det:$D/mambavision/cascade-mask-rcnn_mambavision-t_fpn_ms-3x_coco.py
    seg:$S/upernet_vmamba-t_$U.py seg:$S/upernet_efficientvmamba-t_$U.py seg:$S/upernet_groupmamba-t_$U.py
    seg:$S/upernet_spatialmamba-t_$U.py seg:$S/upernet_vim-t_$U.py seg:$S/upernet_plainmamba-l1_$U.py
    seg:$S/msvmamba/upernet_msvmamba-t_$U.py seg:$S/mambavision/upernet_mambavision-t_$U.py)
if part families; then
    n=0; mkdir -p "$R/families"
    for spec in "${FAMILY_RUNS[@]}"; do for prec in fp16 bf16; do
        [[ $spec =~ ${FAMILIES:-.} ]] || continue
        [[ " $PARTS " == *" det "* && $spec:$prec == det:$D/mask-rcnn_vmamba-t_fpn_1x_coco.py:fp16 ]] && continue
        [[ " $PARTS " == *" seg "* && $spec:$prec == seg:$S/upernet_vmamba-t_$U.py:fp16 ]] && continue
        left=$((LIMIT - SECONDS - 20)); (( left < 120 )) && { echo "== families: no time for $spec:$prec" >> "$LOG"; continue; }
        while (( $(jobs -rp | wc -l) >= ${FAMILY_JOBS:-8} )); do wait -n; done
        left=$((LIMIT - SECONDS - 20)); (( left < 120 )) && { echo "== families: no time for $spec:$prec" >> "$LOG"; continue; }
        cap=$(( left < ${FAMILY_RUN_S:-360} ? left : ${FAMILY_RUN_S:-360} ))
        timeout $cap python3 benchmarks/train_gpu.py "$spec:$prec" --out "$R/families/$n" --iters 300 --workers 2 --no-test \
            --time-limit $((cap - 30)) > "$R/families/run_$n.log" 2>&1 &
        n=$((n + 1))
    done; done
    wait
    python3 benchmarks/train_gpu.py --report "$R"/families/[0-9]* > "$R/families/train_gpu.md" 2>> "$LOG"
    echo "== families: $n runs (${SECONDS}s)" >> "$LOG"
fi
pack
echo "== done (${SECONDS}s)" >> "$LOG"
python3 benchmarks/train_gpu.py --report "$R"/det "$R"/seg "$R"/cls "$R"/cls_gpu_aug "$R"/cls_gpu_aug_plain \
    "$R"/cls_gpu_aug_compiled 2> /dev/null
cat "$R"/families/train_gpu.md 2> /dev/null; grep -E "^== |Error|error:" "$LOG" | tail -n 20 | cut -c1-240
