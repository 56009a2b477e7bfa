"""The GPU weight-sync check script, run on CPU with a tiny model (catches errors in the script itself)."""

from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_bridge_check.py"


@pytest.mark.slow
@pytest.mark.dist
def test_gpu_bridge_check_runs_tiny_on_cpu(run_torchrun):
    proc = run_torchrun(SCRIPT, 1, "--tiny", "--repeats", "1", timeout=300)
    assert "GPU BRIDGE CHECK DONE" in proc.stdout and "[torch engine]" in proc.stdout
