#!/usr/bin/env bash
# Weight-sync phases on one H100 for a Qwen3-8B-shaped model: export + load into the torch engine
# (and into vLLM with --vllm). Needs a CUDA PyTorch with megatron-core and transformers; ~3-5 min.
#   bash benchmarks/gpu_bridge_check.sh [--vllm] [--layers 36] [--repeats 3]
# --vllm needs vLLM 0.32.x (pip install -e ".[gpu]"). Not yet run on a GPU.
# (--tiny runs a tiny fp32 model, also on CPU: tests/integration/test_gpu_bridge_check_cpu.py, marked slow)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 480 torchrun --standalone --nproc_per_node 1 benchmarks/gpu_bridge_check.py "$@" 2>&1 | tee gpu_bridge_check.log
