from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "dist" / "dist_reducer.py"


@pytest.mark.dist
def test_gloo_reducer_matches_single_process(run_torchrun):
    proc = run_torchrun(SCRIPT, 2, timeout=240)
    assert "DIST_REDUCER_OK" in proc.stdout
    print(proc.stdout)



@pytest.mark.dist
def test_labels_do_not_depend_on_the_world_size(run_torchrun):
    """One launch of 4 processes runs the reducer on groups of 1, 2, 3 and 4 ranks."""
    assert "DIST_LAYOUT_OK" in run_torchrun(SCRIPT, 4, "--layout-only", timeout=240).stdout
