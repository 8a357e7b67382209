#!/usr/bin/env bash
# visionssm beside the official code of Vim, EfficientVMamba, GroupMamba, Spatial-Mamba and MambaVision, on one
# GPU machine in one command of at most 10 minutes, from the repository root:
#
#   bash benchmarks/official_h200.sh ROOT [DIR]
#
# ROOT: the official checkouts (see benchmarks/official_compare.py), with extensions already built into ROOT/_ext
# (`official_compare.py build`, e.g. on another machine with nvcc and the GPU machine's torch) or built here;
# extensions that import are kept. Extensions still missing compile in the background on all cores but four, while
# FIRST (models whose extensions are there) are measured on those four; THEN are measured once the build is done (or
# stopped, 150 s before LIMIT). BUILD_FAMILIES (e.g. "vim spatialmamba") limits the build to those families.
# The measuring process only launches kernels: four cores keep it from waiting on the compiler. LIMIT (seconds,
# default 560) bounds the whole. Writes DIR (default $OUT): env.txt, build.log, official.json, official.md (ours
# against official: img/s, peak GiB, params; with a kernel-time breakdown of one training step of each T model in
# the JSON). With KEEP_EXT=1 also the extensions built here, as ext.tgz.part-* of at most 15 MiB each (at most four,
# the files a device command returns), for a later run: `cat ext.tgz.part-* | tar xz -C ROOT/_ext`.
set -uo pipefail
root=${1:?official checkouts folder}
dir=${2:-${OUT:?set OUT or pass an output directory}}
LIMIT=${LIMIT:-560}
FIRST=${FIRST-groupmamba_tiny spatialmamba_tiny efficientvmamba_tiny}   # FIRST="" measures none first
THEN=${THEN-vim_tiny mambavision_t}
mkdir -p "$dir"
source benchmarks/gpu_env.sh
cores=$(nproc)
pin() {   # pin CORES CMD...: run CMD on those cores where taskset exists
    local set=$1; shift
    if command -v taskset > /dev/null && (( cores > 8 )); then taskset -c "$set" "$@"; else "$@"; fi
}
measure() {   # measure CORES MODELS...
    local set=$1; shift
    pin "$set" python3 benchmarks/official_compare.py measure "$root" --models "$@" --profile --append \
        --time-budget $((LIMIT - SECONDS - 15)) --json "$dir/official.json" --md "$dir/official.md" \
        | grep -v '^|'
}
set -m
pin "4-$((cores - 1))" python3 benchmarks/official_compare.py build "$root" --missing-only ${BUILD_FAMILIES:+--families $BUILD_FAMILIES} \
    --jobs $((cores > 8 ? cores - 4 : cores)) > "$dir/build.log" 2>&1 &   # its own process group (set -m below)
build=$!
set +m
[[ -n "$FIRST" ]] && measure 0-3 $FIRST
while kill -0 $build 2> /dev/null && (( SECONDS < LIMIT - 150 )); do sleep 2; done
kill -0 $build 2> /dev/null && { echo "[official_h200] build stopped at ${SECONDS}s (LIMIT)"; kill -- -$build 2> /dev/null || kill $build; }
grep '^\[build\]' "$dir/build.log" | cut -c1-300
echo "[official_h200] build done at ${SECONDS}s"
[[ -n "$THEN" ]] && measure "0-$((cores - 1))" $THEN
cat "$dir/official.md"
if [[ ${KEEP_EXT:-0} == 1 ]]; then
    (cd "$root/_ext" && find . -name '*.so' -o -name build_report.json | tar czf - -T -) \
        | split -b 15M -d - "$dir/ext.tgz.part-"
    ls "$dir"/ext.tgz.part-* | wc -l | xargs echo "[official_h200] built extensions packed, parts:"
fi
echo "[official_h200] done in ${SECONDS}s"
