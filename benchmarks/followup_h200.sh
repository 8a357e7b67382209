#!/usr/bin/env bash
# The measurements that close the performance work, on one GPU machine in one command of at most 10 minutes,
# from the repository root:
#
#   bash benchmarks/followup_h200.sh [DIR] [BASELINE_REV]
#
# In order, each under its own time limit, so that one slow part cannot starve the rest:
#  00. (part "tests") the kernels' tests on the GPU: LayerNorm, state fusion, conv1d, the scan (pytest -n 8, 160 s;
#      the failures and distinct errors print to the console);
#   0. (part "new") state_fusion_bench.py, conv1d_bench.py and kernels/bench.py's Vim shapes (the kernels alone),
#      then an A/B of Vim-T/S, Spatial-Mamba-T, EfficientVMamba-T and VMamba-T against the revision before their
#      latest kernel changes (default 8087c8b: before the sequential scan's per-chunk output tiles and the state
#      fusion's input gradient without layout conversions): speed and peak memory (NEW_MODELS replaces the models).
#      NEW_BASE names that revision, or a `git archive` of it where the checkout has no history. 8087c8b's state
#      fusion kernel gradient reads past its input (fixed in f326f5b), which faulted in Spatial-Mamba-T's A/B at
#      batch 128: for that model pass an archive of 8087c8b with f326f5b's kernels/state_fusion.py change applied;
#  0b. (part "ln", not in the default set) the Triton LayerNorm alone: GroupMamba-T, VMamba-T, EfficientVMamba-T
#      and Spatial-Mamba-T against the same code with VISIONSSM_LAYER_NORM=torch (ab.py --baseline-env), training
#      and batch-128 inference, then batch-8 inference (the host-bound case). LN_BASE names that code: a revision,
#      or a `git archive` of it where the checkout has no history (default: this working tree, as a tar).
#  0c. (part "states", not in the default set) the scan's state checkpoints recomputed in the backward at d_state > 4
#      (the default) against kept (VISIONSSM_SCAN_STATES=keep, ab.py --baseline-env): PlainMamba-L1,
#      EfficientVMamba-T and MambaVision-T training, speed and peak memory, then kernels/bench.py at Vim-S's
#      shapes (both ways). STATES_BASE names the code as LN_BASE does;
#  0d. (part "host", not in the default set) where an eager training step's host time goes: launch_overhead.py (the
#      host time of one launch of each op, through Triton's launcher and run_kernel's direct one), then
#      train_step_host.py at batch 2, where the GPU idles and the step takes its host time: VMamba-T through
#      Triton's launches, through direct ones (VISIONSSM_TRITON_LAUNCH=direct) and with PyTorch's LayerNorm
#      (VISIONSSM_LAYER_NORM=torch), three rounds in turn (one process each differs by tens of ms), then Swin-T
#      (host_step.log);
#  0e. (part "launch", not in the default set) tests/test_launch.py on the GPU, then ab.py: the direct launches
#      against Triton's on the same code (--baseline-env VISIONSSM_TRITON_LAUNCH=triton), VMamba-T, GroupMamba-T,
#      Spatial-Mamba-T and Vim-T, bf16 training and inference (ab_launch.json);
#  0f. (part "graphs", not in the default set) the training step replayed as CUDA graphs (visionssm.GraphedModule):
#      its GPU tests (test_cuda_graph.log), VMamba-T's step eager and graphed at batch 2 and 128 (graph_step.log),
#      then tools/benchmark.py: the T models' bf16 training step at batch 128, eager and with --cuda-graph, one after
#      the other (bench_eager.json, bench_cuda-graph.json);
#   1. ab.py: this checkout against BASELINE_REV (default: the revision before the GroupMamba / Spatial-Mamba / Vim
#      memory work) for GroupMamba-T, Spatial-Mamba-T, Vim-T/S and VMamba-T, bf16 inference and training;
#   2. tools/benchmark.py: MambaVision-T, PlainMamba-L1, MSVMamba-T beside ConvNeXt-T (bf16, batch 128, 224²), and
#      batch-8 inference of VMamba-T / ConvNeXt-T and Vim-T / DeiT-T (the host-bound case);
#   3. kernels/bench.py --sweep --only Vim: the sequential kernel's decay handling both ways at Vim's shapes;
#   4. VMamba-T's AOTInductor packages (static shapes) against eager and torch.compile at batch 1 and 32 (AOTI_S
#      seconds, default 150; AOTI_BATCHES replaces the batch sizes: each builds two packages of about 2 minutes);
#   5. the kernel fuzz test (tests/test_kernel_fuzz.py) on the GPU: VISIONSSM_FUZZ_CASES per route kind;
#  5b. (part "profile8", not in the default set) tools/profile_model.py at batch 8 for VMamba-T: where the host-bound
#      step's time goes (profile_b8.log).
# PARTS picks some of them (parts: tests new ab bench b8 sweep aoti fuzz, the default; BENCH_MODELS and
# BENCH_BUDGET change part 2's models and seconds); the fuzz takes what is left of LIMIT (default 580 seconds since
# the script started). Writes DIR (default $OUT): env.txt, ab_new.json, ab.json, bench.json, bench_b8.json,
# export_latency.json, fuzz.json, fuzz.log (8 files; the kernel sweep prints to the console); part ln: ab_ln.json,
# ab_ln_b8.json; part states: ab_states.json; part profile8: profile_b8.log; part host: host_step.log; part launch:
# ab_launch.json; part graphs: test_cuda_graph.log, graph_step.log, bench_eager.json, bench_cuda-graph.json.
set -uo pipefail
dir=${1:-${OUT:?set OUT or pass an output directory}}
base=${2:-1591727}
PARTS=" ${PARTS:-tests new ab bench b8 sweep aoti fuzz} "
LIMIT=${LIMIT:-580}
part() { [[ "$PARTS" == *" $1 "* ]]; }
# in_group SECONDS CMD...: CMD in a process group of its own, the whole group killed after SECONDS (exit 124). A plain
# `timeout` stops pytest but can leave its xdist workers running on the GPU, under every measurement that follows.
in_group() { local limit=$1; shift; setsid "$@" & local pid=$! rc
             ( sleep "$limit"; kill -TERM -- "-$pid" 2> /dev/null && { sleep 5; kill -KILL -- "-$pid" 2> /dev/null; } ) &
             local watchdog=$!; wait "$pid"; rc=$?; kill "$watchdog" 2> /dev/null
             (( rc == 143 || rc == 137 )) && rc=124; return $rc; }
mkdir -p "$dir"
# the switch A/Bs' baseline by default: this working tree itself (a device checkout's git history, where it has one,
# need not match the files that travelled)
same=$(mktemp --suffix=.tar); tar cf "$same" --exclude=visionssm/kernels visionssm kernels
source benchmarks/gpu_env.sh
part tests && { xdist=$(python3 -c 'import xdist' 2> /dev/null && echo "-n 8")
    in_group 160 python3 -m pytest -p no:cacheprovider -q $xdist -rf tests/test_state_fusion.py \
        tests/test_conv1d.py tests/test_layer_norm.py tests/test_triton_scan.py \
        > /tmp/gpu_tests.log 2>&1
    echo "[followup_h200] kernel tests: pytest exit $? (124: cut at 160 s)"
    grep -E "^E   .*Error|^FAILED|passed|failed" /tmp/gpu_tests.log | sort | uniq -c | head -n 30 | cut -c1-240
    grep -qE "passed|failed" /tmp/gpu_tests.log || tail -n 15 /tmp/gpu_tests.log; }
part profile8 && timeout 60 python3 tools/profile_model.py vmamba_tiny_s1l8 --batch 8 --steps 10 --top 20 \
    > "$dir/profile_b8.log" 2>&1
part new && { timeout 60 python3 benchmarks/state_fusion_bench.py > "$dir/state_fusion_bench.log" 2>&1
    timeout 30 python3 benchmarks/conv1d_bench.py > "$dir/conv1d_bench.log" 2>&1
    cat "$dir/state_fusion_bench.log" "$dir/conv1d_bench.log" | grep '^|'
    timeout 60 python3 kernels/bench.py --no-ref --only Vim 2>&1 | tail -n 8
    timeout 280 python3 benchmarks/ab.py --baseline "${NEW_BASE:-8087c8b}" --rounds 5 --json "$dir/ab_new.json" \
        --models ${NEW_MODELS:-vim_tiny vim_small spatialmamba_tiny efficientvmamba_tiny vmamba_tiny_s1l8} \
        2>&1 | tail -n 16; }
part ln && { timeout 220 python3 benchmarks/ab.py --baseline "${LN_BASE:-$same}" --baseline-env VISIONSSM_LAYER_NORM=torch \
        --rounds 5 --json "$dir/ab_ln.json" --models groupmamba_tiny vmamba_tiny_s1l8 efficientvmamba_tiny \
        spatialmamba_tiny 2>&1 | tail -n 12
    timeout 90 python3 benchmarks/ab.py --baseline "${LN_BASE:-$same}" --baseline-env VISIONSSM_LAYER_NORM=torch \
        --rounds 5 --batch 8 --modes infer --json "$dir/ab_ln_b8.json" --models vmamba_tiny_s1l8 groupmamba_tiny \
        2>&1 | tail -n 6; }
part states && { timeout 240 python3 benchmarks/ab.py --baseline "${STATES_BASE:-$same}" \
        --baseline-env VISIONSSM_SCAN_STATES=keep --rounds 5 --modes train --json "$dir/ab_states.json" \
        --models plainmamba_l1 efficientvmamba_tiny mambavision_t 2>&1 | tail -n 10
    timeout 90 python3 kernels/bench.py --no-ref --only Vim 2>&1 | tail -n 8; }
part host && { timeout 90 python3 benchmarks/launch_overhead.py 2>&1 | tail -n 20
    for round in 1 2 3; do
        for run in vmamba_tiny_s1l8:triton:triton vmamba_tiny_s1l8:triton:direct vmamba_tiny_s1l8:torch:direct; do
            IFS=: read -r model norm launch <<< "$run"
            echo "== round $round: $model LayerNorm=$norm launch=$launch" >> "$dir/host_step.log"
            VISIONSSM_LAYER_NORM=$norm VISIONSSM_TRITON_LAUNCH=$launch timeout 60 python3 benchmarks/train_step_host.py \
                --model "$model" --batch 2 --optimizer adamw-fused >> "$dir/host_step.log" 2>&1
        done
    done
    echo "== swin_tiny_patch4_window7_224" >> "$dir/host_step.log"
    timeout 60 python3 benchmarks/train_step_host.py --model swin_tiny_patch4_window7_224 --batch 2 \
        --optimizer adamw-fused >> "$dir/host_step.log" 2>&1
    grep -E "^== | step ms " "$dir/host_step.log"; }
# the training step replayed as CUDA graphs (visionssm.GraphedModule): its tests on this GPU, VMamba-T's step eager
# and graphed at batch 2 and 128, then the T models' bf16 training throughput both ways
part graphs && { in_group 200 python3 -m pytest -p no:cacheprovider -q -rf --continue-on-collection-errors \
        tests/test_cuda_graph.py tests/test_mm_backbone.py -k cuda_graph > "$dir/test_cuda_graph.log" 2>&1
    tail -n 12 "$dir/test_cuda_graph.log"
    for run in eager:2 cuda-graph:2 eager:128 cuda-graph:128; do
        IFS=: read -r mode batch <<< "$run"
        echo "== $mode batch $batch: vmamba_tiny_s1l8" >> "$dir/graph_step.log"
        timeout 60 python3 benchmarks/train_step_host.py --model vmamba_tiny_s1l8 --batch $batch --optimizer adamw-fused \
            $([[ $mode == eager ]] || echo --cuda-graph) >> "$dir/graph_step.log" 2>&1
    done
    grep -E "^== | step ms " "$dir/graph_step.log"
    for mode in eager cuda-graph; do
        timeout 200 python3 tools/benchmark.py --no-baselines --time-budget 180 --json "$dir/bench_$mode.json" \
            --models ${GRAPH_MODELS:-vmamba_tiny_s1l8 groupmamba_tiny spatialmamba_tiny vim_tiny efficientvmamba_tiny} \
            --resolutions 224 --batch-sizes 128 --measure fwd_bwd:bf16@224 $([[ $mode == eager ]] || echo --cuda-graph) \
            2>&1 | tail -n 8
    done; }
part launch && { in_group 120 python3 -m pytest -p no:cacheprovider -q -rf tests/test_launch.py 2>&1 | tail -n 4
    VISIONSSM_TRITON_LAUNCH=direct timeout 240 python3 benchmarks/ab.py --baseline "${LAUNCH_BASE:-$same}" \
        --baseline-env VISIONSSM_TRITON_LAUNCH=triton --rounds 5 --json "$dir/ab_launch.json" \
        --models vmamba_tiny_s1l8 groupmamba_tiny spatialmamba_tiny vim_tiny 2>&1 | tail -n 12; }
part ab && timeout 200 python3 benchmarks/ab.py --baseline "$base" --rounds 5 --json "$dir/ab.json" \
    --models groupmamba_tiny spatialmamba_tiny vim_tiny vim_small vmamba_tiny_s1l8 2>&1 | tail -n 30
part bench && python3 tools/benchmark.py --no-baselines --time-budget "${BENCH_BUDGET:-150}" --json "$dir/bench.json" \
    --models ${BENCH_MODELS:-mambavision_t plainmamba_l1 msvmamba_tiny convnext_tiny vmamba_tiny_s1l8 vim_tiny deit_tiny_patch16_224} \
    --resolutions 224 --batch-sizes 128 --measure infer,fwd_bwd:bf16@224 2>&1 | tail -n 12
part b8 && python3 tools/benchmark.py --no-baselines --time-budget 60 --json "$dir/bench_b8.json" \
    --models vmamba_tiny_s1l8 convnext_tiny vim_tiny deit_tiny_patch16_224 \
    --resolutions 224 --batch-sizes 8 --measure infer:bf16@224 2>&1 | tail -n 6
part sweep && timeout 60 python3 kernels/bench.py --sweep --only Vim 2>&1 | tail -n 20
part aoti && timeout ${AOTI_S:-150} python3 benchmarks/export_latency.py --models vmamba_tiny_s1l8 --static \
    --batches ${AOTI_BATCHES:-1 32} --out "$dir/export_latency.json" \
    2>&1 | grep -v Warning | tail -n 8
left=$((LIMIT - SECONDS)); (( left > 40 )) || left=40
# SIGINT first: pytest then still writes the report of the route kinds that finished
part fuzz && { VISIONSSM_FUZZ_REPORT="$dir/fuzz.json" timeout -s INT -k 20 "$left" python3 -m pytest -p no:cacheprovider \
    -q tests/test_kernel_fuzz.py > "$dir/fuzz.log" 2>&1; tail -n 25 "$dir/fuzz.log"; }
echo "[followup_h200] done in ${SECONDS}s"
