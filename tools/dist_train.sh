#!/usr/bin/env bash
# Distributed training with torchrun, one process per GPU; everything after NGPUS goes to tools/train.py.
#
#   tools/dist_train.sh CONFIG NGPUS [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
#
# Several nodes: run the same command on every node with NNODES, NODE_RANK (0 .. NNODES-1), MASTER_ADDR (the
# address of node 0) and MASTER_PORT (default 29500) set; NGPUS is the GPUs per node. On one node without
# MASTER_PORT, torchrun picks a free port, so several jobs can share a machine. PYTHON selects the interpreter.
set -euo pipefail
if [[ $# -lt 2 || ! $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 CONFIG NGPUS [tools/train.py arguments...]  (NGPUS: processes per node, a positive integer)" >&2
    exit 2
fi
CONFIG=$1
NGPUS=$2
shift 2
[[ -f $CONFIG ]] || { echo "$0: config file '$CONFIG' does not exist" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/tools/_torchrun.sh"
exec "${TORCHRUN[@]}" --nproc_per_node="$NGPUS" "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
