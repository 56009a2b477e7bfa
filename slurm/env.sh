# Environment for harmony_mcore jobs, sourced by slurm/*.sbatch. Edit for your cluster.

# --- Errors ------------------------------------------------------------------------------------
# `set -e` alone ends a job silently: every failing command of the job script says what failed.
_harmony_failed() {
  local why=""
  if (( $1 > 128 )); then why=" (killed by SIG$(kill -l $(($1 - 128))))"; fi
  echo "[harmony] $3: \`$2\` failed with exit $1$why" >&2
}
trap '_harmony_failed $? "$BASH_COMMAND" "${BASH_SOURCE[0]##*/} line $LINENO"' ERR

# --- Python / container ------------------------------------------------------------------------
# Either activate an environment that has harmony_mcore installed ...
# source /path/to/venv/bin/activate
# ... or run every task in a container (pyxis/enroot), e.g. an NGC PyTorch image with our deps:
# export HARMONY_CONTAINER=/path/to/images/harmony_mcore.sqsh
# export HARMONY_CONTAINER_MOUNTS=/path/to/data:/path/to/data,$HOME/.cache:/root/.cache
export PYTHONPATH="${SLURM_SUBMIT_DIR:-$PWD}${PYTHONPATH:+:$PYTHONPATH}"

# --- Rendezvous --------------------------------------------------------------------------------
# The ranks meet on the job's first node, at the address Slurm itself reaches it by (its NodeAddr in
# slurm.conf: the hostname unless the admin set an address), so node names need not resolve.
# Set MASTER_ADDR (e.g. the node's name on the fast network) to use another interface, and
# MASTER_PORT (default 29500) if several jobs share a node.
if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  # Whole outputs, no `| head`: under pipefail a reader that stops early kills the job by SIGPIPE.
  if ! _nodes=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || [ -z "$_nodes" ]; then
    echo "[harmony] slurm/env.sh: 'scontrol show hostnames $SLURM_JOB_NODELIST' gave no node: cannot find" \
         "the job's first node for the rendezvous (set MASTER_ADDR to it)" >&2
    return 1
  fi
  _first=${_nodes%%$'\n'*}
  _node=$(scontrol show node "$_first" 2>/dev/null) || _node=""  # unknown: the node's name will do
  if [[ $_node =~ NodeAddr=([^[:space:]]+) ]]; then MASTER_ADDR=${BASH_REMATCH[1]}; fi
  export MASTER_ADDR=${MASTER_ADDR:-$_first}
  unset _nodes _first _node
fi

# --- NCCL --------------------------------------------------------------------------------------
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}          # Megatron TP/SP overlap ordering
# Do not set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: vLLM's sleep mode refuses it (harmony doctor checks).
# InfiniBand / RoCE: name your HCAs and the interface for bootstrap traffic when NCCL picks wrong ones.
# export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3
# export NCCL_SOCKET_IFNAME=ib0          # or the cluster's management interface, e.g. eth0
# export NCCL_IB_GID_INDEX=3             # RoCE only
# AWS EFA: export FI_PROVIDER=efa FI_EFA_USE_DEVICE_RDMA=1 NCCL_PROTO=simple

# --- Logging -----------------------------------------------------------------------------------
# wandb follows log.wandb (default offline: compute nodes often have no internet; `wandb sync` later);
# WANDB_MODE, when exported, overrides it for every run.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # models are read from model.path, never downloaded
export HARMONY_MODELS=${HARMONY_MODELS:-/models}  # where the presets look for model directories
