import pytest

from harmony_mcore.config import ConfigError, RunConfig
from harmony_mcore.preflight import preflight

# Qwen3-1.7B shape: 16 heads, 8 KV heads, 28 layers.
QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
         "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}


def run(tp=1, pp=1, vpp=None, dp=None, mbs=8, problems=128, n=16, rollout_tp=1, dtype="bf16"):
    cfg = RunConfig()
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp, cfg.parallel.dp = tp, pp, vpp, dp
    cfg.parallel.micro_batch_size = mbs
    cfg.data.problems_per_step, cfg.rollout.n, cfg.rollout.tp, cfg.model.dtype = problems, n, rollout_tp, dtype
    return cfg


def test_valid_layouts_return_dp():
    assert preflight(run(tp=2, pp=2), 16, QWEN3, on_gpu=True) == 4
    assert preflight(run(tp=8, pp=2, vpp=7, mbs=4), 64, QWEN3, on_gpu=True) == 4
    assert preflight(run(rollout_tp=16), 16, QWEN3, on_gpu=True) == 16  # KV heads replicated when TP > KV heads
    cfg = run(dtype="fp32")
    cfg.model.hf_config = QWEN3
    assert preflight(cfg, 2, on_gpu=False) == 2


@pytest.mark.parametrize("cfg, world, message", [
    (run(tp=3), 8, r"world size 8 is not a multiple of parallel.tp\*parallel.pp = 3: launch a multiple of 3 "
                   r"processes or pick tp\*pp among \[1, 2, 4, 8\]"),
    (run(tp=2, dp=2), 8, r"parallel.dp=2 but world size 8 = tp 2 x pp 1 x dp 4: set parallel.dp=4 \(or null\) "
                         r"or launch 4 processes"),
    (run(tp=16), 16, r"8 KV heads \(query groups\) are not divisible by parallel.tp=16: use tp in \[1, 2, 4, 8\]"),
    (run(pp=3), 6, r"28 layers are not divisible by parallel.pp=3: pick pp among \[1, 2, 4, 7, 14, 28\]"),
    (run(pp=2, vpp=4), 2, r"28 layers are not divisible by parallel.pp\*parallel.vpp = 2\*4: pick pp\*vpp among"),
    (run(mbs=5), 2, r"2048 rows per view \(data.problems_per_step 128 x rollout.n 16\) do not split into dp=2 x "
                    r"micro_batch_size=5: set parallel.micro_batch_size to a divisor of 1024, e.g. 4"),
    (run(problems=3, n=1, mbs=1), 2, r"make data.problems_per_step\*rollout.n a multiple of dp=2"),
    (run(pp=4, vpp=7, mbs=16, problems=16, n=2), 4, r"virtual pipeline needs the micro-batches per rank \(2\) to be "
                                                    r"a multiple of parallel.pp=4"),
    (run(rollout_tp=3), 8, r"rollout.tp=3 does not divide the world size 8: use rollout.tp in \[1, 2, 4, 8\]"),
    (run(rollout_tp=6, problems=96), 12,
     r"rollout.tp=6 is incompatible with 16 heads / 8 KV heads .*: use rollout.tp in \[1, 2, 4\]"),
    (run(vpp=2), 2, r"parallel.vpp needs parallel.pp > 1"),
])
def test_each_failure_names_the_fix(cfg, world, message):
    with pytest.raises(ConfigError, match=message):
        preflight(cfg, world, QWEN3, on_gpu=True)


def test_heads_not_divisible_by_tp():
    odd = {**QWEN3, "num_attention_heads": 14, "num_key_value_heads": 2}
    with pytest.raises(ConfigError, match=r"14 attention heads are not divisible by parallel.tp=4: use tp in \[1, 2\]"):
        preflight(run(tp=4), 4, odd, on_gpu=True)


def test_sequence_parallel_needs_transformer_engine():
    cfg = run(tp=2, dtype="fp32")
    cfg.parallel.sequence_parallel = True
    with pytest.raises(ConfigError, match="parallel.sequence_parallel needs Transformer Engine on GPU .*: set "
                                          "parallel.sequence_parallel=false"):
        preflight(cfg, 2, QWEN3, on_gpu=False)


def test_cpu_dtype_missing_model_and_unknown_architecture():
    with pytest.raises(ConfigError, match="model.dtype=bf16 needs a GPU: set model.dtype=fp32 on CPU"):
        preflight(run(), 1, QWEN3, on_gpu=False)
    with pytest.raises(ConfigError, match="set model.hf_config or model.path"):
        preflight(run(), 1, None, on_gpu=True)
    with pytest.raises(ConfigError, match="unsupported architecture GPT2LMHeadModel: supported are"):
        preflight(run(), 1, {**QWEN3, "architectures": ["GPT2LMHeadModel"]}, on_gpu=True)
