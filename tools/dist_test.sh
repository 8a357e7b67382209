#!/usr/bin/env bash
# Distributed evaluation with torchrun, one process per GPU; everything after NGPUS goes to tools/test.py.
#
#   tools/dist_test.sh CONFIG CHECKPOINT NGPUS [--work-dir DIR] [--cfg-options k=v ...]
#
# Several nodes: as tools/dist_train.sh (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT; NGPUS per node).
set -euo pipefail
if [[ $# -lt 3 || ! $3 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 CONFIG CHECKPOINT NGPUS [tools/test.py arguments...]  (NGPUS: processes per node)" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NGPUS=$3
shift 3
[[ -f $CONFIG ]] || { echo "$0: config file '$CONFIG' does not exist" >&2; exit 2; }
[[ -f $CHECKPOINT ]] || { echo "$0: checkpoint '$CHECKPOINT' does not exist" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/tools/_torchrun.sh"
exec "${TORCHRUN[@]}" --nproc_per_node="$NGPUS" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
