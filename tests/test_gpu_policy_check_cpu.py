"""CPU-checkable parts of benchmarks/gpu_policy_check.py (the GPU run itself is unverified here)."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

from harmony_mcore import plan
from harmony_mcore.models import families

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_policy_check.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_policy_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_matmul_params_match_transformers_linear_weights(bench):
    tiny = {**bench.QWEN3_1P7B, "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}
    cfg = transformers.Qwen3Config(**{k: v for k, v in tiny.items() if k not in ("architectures", "model_type")})
    model = transformers.Qwen3ForCausalLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert plan.matmul_params(families.shape(tiny)) == linear


def test_flops_per_token_qwen3_1p7b(bench):
    # 1.41e9 non-embedding matmul parameters (Qwen3-1.7B's published 1.4B) + the 2048 x 151936 output layer.
    n = plan.matmul_params(families.shape(bench.QWEN3_1P7B))
    assert abs(n - 1.409e9 - 2048 * 151936) < 1e6
    s = 4096
    causal_pairs = s * (s + 1) // 2  # attention scores and values: 4 * heads * head_dim FLOPs per pair and layer
    expect = 3 * (2 * n * s + 4 * 28 * 16 * 128 * causal_pairs) / s
    assert bench.train_flops_per_token(bench.QWEN3_1P7B, s) == pytest.approx(expect)
