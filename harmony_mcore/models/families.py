"""Model families: an HF `config.json` -> Megatron `TransformerConfig`, GPTModel arguments, layer spec.

The registry keyed by HF architecture is derived from the bridge's (`harmony_mcore.bridge.mapping.FAMILIES`),
so the weight mapping and the model config read the same flags (qkv bias, qk norm). Everything else (GQA,
head_dim, rope theta/scaling, tied embeddings, RMSNorm eps) comes from the HF config. Megatron parameter
names are the standard ones of the chosen spec (see `layer_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from harmony_mcore.bridge import mapping as bridge_mapping
from harmony_mcore.config import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    qkv_bias: bool  # Qwen2/2.5: q/k/v projections carry a bias
    qk_layernorm: bool  # Qwen3: RMSNorm on each head's q and k


FAMILIES: dict[str, Family] = {arch: Family(f.name, qkv_bias=f.qkv_bias, qk_layernorm=f.qk_norm)
                               for arch, f in bridge_mapping.FAMILIES.items()}

_BY_MODEL_TYPE = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}

# Megatron's llama3 rope scaling fixes these (megatron/core/models/common/embeddings/rotary_pos_embedding.py).
_MEGATRON_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def hf_dict(hf_config: Any) -> dict[str, Any]:
    """A config.json dict from a dict or a transformers PretrainedConfig."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise ConfigError(f"model config must be a config.json dict or a transformers config, got {type(hf_config)}")


def architecture(hf_config: Any) -> str:
    cfg = hf_dict(hf_config)
    archs = cfg.get("architectures") or []
    if archs:
        return archs[0]
    return _BY_MODEL_TYPE.get(cfg.get("model_type", ""), f"<model_type {cfg.get('model_type')!r}>")


def get_family(hf_config: Any) -> Family:
    arch = architecture(hf_config)
    if arch not in FAMILIES:
        raise ConfigError(f"unsupported architecture {arch}: supported are {', '.join(sorted(FAMILIES))}")
    return FAMILIES[arch]


def rope(hf_config: Any) -> tuple[float, float | None]:
    """(rope theta, llama3 scaling factor or None), from transformers 4.x or 5.x config keys."""
    cfg = hf_dict(hf_config)
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or params)
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return theta, None
    if kind != "llama3":
        raise ConfigError(f"rope scaling type {kind!r} is not supported: use a model with default or llama3 rope")
    for key, want in _MEGATRON_LLAMA3.items():
        if key in scaling and float(scaling[key]) != want:
            raise ConfigError(f"llama3 rope scaling {key}={scaling[key]}: megatron-core supports only {want}")
    return theta, float(scaling["factor"])


def head_dim(hf_config: Any) -> int:
    cfg = hf_dict(hf_config)
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of divisible_by * TP (each TP shard equal)."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def _check_supported(cfg: dict[str, Any], family: Family) -> None:
    if cfg.get("use_sliding_window"):
        raise ConfigError("use_sliding_window=true is not supported: set it to false in config.json")
    if cfg.get("mlp_bias"):
        raise ConfigError("mlp_bias=true is not supported by the Megatron policy")
    if cfg.get("attention_bias") and not family.qkv_bias:
        raise ConfigError(f"attention_bias=true is not supported for {family.name}")
    rope(cfg)
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act={act!r} is not supported: the registered families use silu (SwiGLU)")


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
           torch.float32: torch.float32, torch.bfloat16: torch.bfloat16, torch.float16: torch.float16}


def transformer_config(hf_config: Any, *, tp: int = 1, pp: int = 1, vpp: int | None = None,
                       dtype: str | torch.dtype = "fp32", sequence_parallel: bool = False,
                       recompute: str = "none", **overrides: Any):
    """The Megatron TransformerConfig for this HF config and parallel layout (dropout off: RL fine-tuning)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = hf_dict(hf_config)
    family = get_family(cfg)
    _check_supported(cfg, family)
    dt = _DTYPES[dtype]
    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        kv_channels=head_dim(cfg),
        normalization="RMSNorm",
        layernorm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=family.qkv_bias,
        qk_layernorm=family.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=sequence_parallel and tp > 1,
        params_dtype=dt,
        pipeline_dtype=dt,
        bf16=dt == torch.bfloat16,
        fp16=dt == torch.float16,
        use_cpu_initialization=not on_gpu,
        # Fused kernels need CUDA (and some need TE/apex); the jit-fused bias+SwiGLU is fine on GPU.
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # On gloo, batched p2p between the same two ranks (PP=2: next == prev) pairs messages by order,
        # which garbled the interleaved (virtual PP) 1F1B schedule in tests/policy; separate ops are exact.
        batch_p2p_comm=on_gpu,
    )
    if recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def gpt_model_kwargs(hf_config: Any, *, tp: int = 1) -> dict[str, Any]:
    """GPTModel constructor arguments besides config/spec/pre_process/post_process."""
    cfg = hf_dict(hf_config)
    theta, factor = rope(cfg)
    return dict(
        vocab_size=padded_vocab_size(cfg["vocab_size"], tp),
        max_sequence_length=cfg.get("max_position_embeddings", 4096),
        position_embedding_type="rope",
        rotary_base=int(theta),
        rope_scaling=factor is not None,
        rope_scaling_factor=factor if factor is not None else 8.0,
        share_embeddings_and_output_weights=bool(cfg.get("tie_word_embeddings", False)),
    )


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
        return torch.cuda.is_available()
    except Exception:
        return False


def layer_spec(hf_config: Any, *, use_te: bool | None = None):
    """Transformer Engine spec when TE imports (and a GPU is present), the local spec otherwise.

    Parameter names per layer `decoder.layers.{i}.`: `self_attention.linear_qkv.{weight,bias}`,
    `self_attention.linear_proj.weight`, `self_attention.{q,k}_layernorm.weight` (Qwen3),
    `mlp.linear_fc1.weight` ([gate; up] per TP shard), `mlp.linear_fc2.weight`, and the pre-norms:
    local spec `input_layernorm.weight`/`pre_mlp_layernorm.weight`; TE spec fuses them as
    `self_attention.linear_qkv.layer_norm_weight`/`mlp.linear_fc1.layer_norm_weight`.
    Outside the layers: `embedding.word_embeddings.weight`, `decoder.final_layernorm.weight`,
    `output_layer.weight` (absent on the last stage's state when embeddings are tied and PP=1).
    """
    from megatron.core.models.gpt import gpt_layer_specs as specs

    family = get_family(hf_config)
    if use_te is None:
        use_te = te_available()
    if use_te:
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=family.qk_layernorm)
    return specs.get_gpt_layer_local_spec(qk_layernorm=family.qk_layernorm, normalization="RMSNorm")

