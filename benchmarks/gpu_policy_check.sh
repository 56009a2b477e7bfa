#!/usr/bin/env bash
# One-GPU check of the Megatron policy: log-prob agreement with transformers, GRPO-step tokens/s and MFU
# (Qwen3-1.7B shape, random weights, bf16, 4096 tokens per sequence), then a save -> load round trip of the
# model and the distributed optimizer that must reproduce the next step. Target: < 10 minutes on one H100.
#
# Needs only a CUDA PyTorch image (torch + transformers) and the wheels it is handed:
#   benchmarks/gpu_policy_check.sh [WHEEL_DIR]   # installs WHEEL_DIR/megatron_core-*.whl if megatron is missing
# Env: SEQ (4096), ROWS (8 sequences per step), STEPS (3 timed steps), CKPT_TMP (where the checkpoint round trip
# writes ~25 GB: bf16 model + fp32 main params and Adam moments; default the system temp dir).
# Output: a "RESULT {json}" line.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-${WHEELS:-}}"
if ! python -c "import megatron.core" 2>/dev/null; then
  if [ -z "$WHEELS" ]; then
    echo "megatron-core is not installed: pass the directory holding its wheel, e.g. $0 /wheels" >&2
    exit 2
  fi
  # megatron-core needs only numpy/packaging/torch, which the image has: no index access needed.
  python -m pip install --no-deps --no-index "$WHEELS"/megatron_core-*.whl
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=4 PYTHONWARNINGS=ignore
exec timeout 600 python -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_policy_check.py
