from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("dist_reducer.py")


@pytest.mark.dist
def test_gloo_reducer_matches_single_process(run_torchrun):
    proc = run_torchrun(SCRIPT, 2, timeout=240)
    assert "DIST_REDUCER_OK" in proc.stdout
    print(proc.stdout)
