#!/usr/bin/env bash
# Compatibility lane: Python 3.12 + megatron-core 0.19.x, the pair NGC PyTorch (Python 3.12) users resolve.
# On a CPU machine: builds (or reuses) a venv, installs the project with that pair, and runs the policy,
# optimizer and checkpoint tests (gloo, several processes). Not part of CI; result recorded in docs/policy.md.
#
#   benchmarks/compat_py312_mcore019.sh [VENV_DIR] [pytest args...]   # VENV_DIR default /tmp/harmony-py312-mcore019
#
# Env: PYTHON312 (a python3.12; default python3.12, else pyenv's), TORCH_SPEC (torch==2.9.1: PyPI's build is the CUDA
# one, ~3 GB with its nvidia-* wheels, and runs on CPU), MCORE_SPEC (megatron-core==0.19.2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/harmony-py312-mcore019}"
shift || true
PY="${PYTHON312:-python3.12}"
if ! "$PY" -V >/dev/null 2>&1; then
  PY=$(ls -d "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n1)
fi
if [ -z "$PY" ] || ! "$PY" -V >/dev/null 2>&1; then
  echo "no python3.12 found: set PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" \
  "${TORCH_SPEC:-torch==2.9.1}" "${MCORE_SPEC:-megatron-core==0.19.2}"
"$VENV/bin/python" -c "import sys, torch, megatron.core as m; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| megatron-core', m.__version__, '| cuda available:', torch.cuda.is_available())"
export PYTHONPATH="$PWD" PYTHONWARNINGS=ignore
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integration/test_policy_dist.py tests/integration/test_checkpoint_dist.py \
  tests/unit/test_policy_packing.py tests/unit/test_families.py tests/unit/test_preflight.py tests/unit/test_patches.py "$@"
