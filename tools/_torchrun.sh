# Sourced by dist_train.sh and dist_test.sh: sets TORCHRUN, the torchrun command for this node, from NNODES,
# NODE_RANK, MASTER_ADDR and MASTER_PORT, and the NCCL defaults.
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
for var in NNODES NODE_RANK; do
    [[ ${!var} =~ ^[0-9]+$ ]] || { echo "$var must be a non-negative integer, got '${!var}'" >&2; exit 2; }
done
if (( NNODES < 1 || NODE_RANK >= NNODES )); then
    echo "need NNODES >= 1 and NODE_RANK < NNODES, got NNODES=$NNODES and NODE_RANK=$NODE_RANK" >&2
    exit 2
fi
# NVLink SHARP (NVLS) multicast can take shared GPU hosts out of service; on only where the user turns it on.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
TORCHRUN=("${PYTHON:-python3}" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK")
if (( NNODES == 1 )) && [[ -z ${MASTER_PORT:-} ]]; then
    TORCHRUN+=(--standalone)  # a free local port
elif (( NNODES > 1 )) && [[ -z ${MASTER_ADDR:-} ]]; then
    echo "NNODES=$NNODES: set MASTER_ADDR to the address of node 0 (and the same MASTER_PORT on every node)" >&2
    exit 2
else
    TORCHRUN+=(--master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}")
fi
