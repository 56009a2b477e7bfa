"""The colocated vLLM engine on one GPU (needs vllm 0.32.x, the gpu extra; skipped on CPU machines; unverified)."""

from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "vllm_engine_gpu.py"


@pytest.mark.gpu
@pytest.mark.dist
def test_vllm_engine_matches_torch_engine_after_sync(tmp_path, run_torchrun):
    pytest.importorskip("vllm")
    proc = run_torchrun(SCRIPT, 1, str(tmp_path), env={"CUDA_VISIBLE_DEVICES": "0"}, timeout=600)
    assert "VLLM ENGINE OK" in proc.stdout
