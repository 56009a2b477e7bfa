import pytest
import torch

from harmony_mcore.config import ConfigError
from harmony_mcore.models import families
from harmony_mcore.parallel.distributed import launch_env

QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
         "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
         "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768, "hidden_act": "silu"}
QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
         "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
         "rope_theta": 1000000, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 40960}
LLAMA32 = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
           "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
           "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
           "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


def test_family_flags_and_config():
    q2 = families.transformer_config(QWEN2, tp=2)
    assert q2.add_qkv_bias and not q2.qk_layernorm and q2.num_query_groups == 2 and q2.kv_channels == 64
    q3 = families.transformer_config(QWEN3, dtype="bf16")
    assert q3.qk_layernorm and not q3.add_qkv_bias and q3.kv_channels == 128 and q3.params_dtype == torch.bfloat16
    assert q3.hidden_dropout == 0.0 and q3.normalization == "RMSNorm" and q3.gated_linear_unit
    ll = families.transformer_config(LLAMA32)
    assert ll.layernorm_epsilon == 1e-5 and ll.kv_channels == 64
    kw = families.gpt_model_kwargs(LLAMA32, tp=4)
    assert kw["rope_scaling"] and kw["rope_scaling_factor"] == 32.0 and kw["rotary_base"] == 500000
    assert kw["share_embeddings_and_output_weights"]
    assert kw["vocab_size"] % (128 * 4) == 0 and kw["vocab_size"] >= 128256
    assert not families.gpt_model_kwargs(QWEN3)["rope_scaling"]
    sel = families.transformer_config(QWEN3, recompute="selective")
    assert sel.recompute_granularity == "selective" and sel.recompute_modules == ["core_attn"]
    assert families.transformer_config(QWEN3, recompute="full", pp=4).recompute_granularity == "full"


def test_transformers_v5_rope_parameters_and_config_objects():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=16384, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert families.get_family(cfg).name == "llama"  # no architectures: model_type decides
    assert families.rope(cfg) == (500000.0, 8.0)
    assert families.rope({"rope_parameters": {"rope_theta": 5.0, "rope_type": "default"}}) == (5.0, None)


def test_padded_vocab():
    assert families.padded_vocab_size(150, 1) == 256 and families.padded_vocab_size(256, 2) == 256
    assert families.padded_vocab_size(151936, 8) == 152576


@pytest.mark.parametrize("change, message", [
    ({"architectures": ["MistralForCausalLM"]}, "supported are LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0}}, "low_freq_factor=2.0"),
    ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
])
def test_unsupported_configs_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        families.transformer_config({**LLAMA32, **change})


def test_layer_spec_local_without_te():
    spec = families.layer_spec(QWEN3, use_te=False)
    sub = spec.submodules.self_attention.submodules
    assert sub.q_layernorm is not None and sub.k_layernorm is not None
    from megatron.core.transformer.identity_op import IdentityOp
    assert families.layer_spec(LLAMA32, use_te=False).submodules.self_attention.submodules.q_layernorm is IdentityOp


def test_launch_env_torchrun_and_errors():
    le = launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (le.launched, le.rank, le.world_size, le.local_rank, le.master_addr, le.master_port) == \
        (True, 3, 8, 1, "n1", 1234)
    assert launch_env({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n0"}).master_port == 29500
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        launch_env({"RANK": "0", "WORLD_SIZE": "2"})
    # Slurm's own variables do not make a rank: srun starts torchrun, which sets RANK/WORLD_SIZE
    bare = launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16"})
    assert (bare.launched, bare.rank, bare.world_size) == (False, 0, 1)
