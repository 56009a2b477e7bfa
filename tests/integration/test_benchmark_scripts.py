"""The GPU check scripts in benchmarks/, checked on CPU: their arithmetic (FLOPs, the plan estimate they
print), and gpu_bridge_check.py run with a tiny model (catches errors in the script itself; slow).
The GPU runs themselves are not part of the suite."""

import importlib.util
from pathlib import Path

import pytest
import torch

from harmony_mcore import plan
from harmony_mcore.models import families
from tests.support.tiny import hf_param_count

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_policy_check", BENCHMARKS / "gpu_policy_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_token_qwen3_1p7b(bench):
    # 1.41e9 non-embedding matmul parameters (Qwen3-1.7B's published 1.4B) + the 2048 x 151936 output layer.
    n = plan.matmul_params(families.shape(bench.QWEN3_1P7B))
    assert abs(n - 1.409e9 - 2048 * 151936) < 1e6
    s = 4096
    causal_pairs = s * (s + 1) // 2  # attention scores and values: 4 * heads * head_dim FLOPs per pair and layer
    expect = 3 * (2 * n * s + 4 * 28 * 16 * 128 * causal_pairs) / s
    assert bench.train_flops_per_token(bench.QWEN3_1P7B, s) == pytest.approx(expect)


def test_gpu_policy_check_prints_the_plan_for_its_own_setup(bench):
    """benchmarks/gpu_policy_check.py reports the plan next to max_memory_allocated; its estimate is
    20 bytes per parameter (bf16 weights, fp32 grads, 12 of Adam, bf16 reference) plus 28 layers of
    activations and the logits, with the parameter count taken from transformers."""
    from harmony_mcore.config import ParallelConfig

    hf = bench.QWEN3_1P7B
    assert hf["vocab_size"] % 128 == 0 and hf["tie_word_embeddings"]  # no padding, one embedding copy
    m = families.shape(hf)
    act = plan.layer_activation_bytes(m, bench.SEQ, 1, tp=1, sp=False, recompute="selective", flash=False)
    expected = 20 * hf_param_count(hf) + 28 * act + bench.SEQ * hf["vocab_size"] * 6
    par = ParallelConfig(tp=1, pp=1, micro_batch_size=1, distributed_optimizer=True)
    assert bench.plan_estimate_gib(par, "selective") == pytest.approx(expected / 2**30, rel=1e-12)


@pytest.mark.slow
@pytest.mark.dist
def test_gpu_bridge_check_runs_tiny_on_cpu(run_torchrun):
    proc = run_torchrun(BENCHMARKS / "gpu_bridge_check.py", 1, "--tiny", "--repeats", "1", timeout=300)
    assert "GPU BRIDGE CHECK DONE" in proc.stdout and "[torch engine]" in proc.stdout
