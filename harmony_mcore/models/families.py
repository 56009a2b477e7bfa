"""The model-family registry, and an HF `config.json` -> Megatron `TransformerConfig`, GPTModel arguments, spec.

`FAMILIES` is the one registry: the Megatron model (here), the weight mapping
(`harmony_mcore.bridge.mapping`), the layout checks (`harmony_mcore.preflight`) and `harmony plan`
all look a model up in it. What a family provides is described in `harmony_mcore.models.family`.
Everything a family does not fix (GQA, head_dim, rope theta/scaling, tied embeddings, RMSNorm eps)
comes from the HF config.
"""

from __future__ import annotations

from typing import Any

from harmony_mcore.models.family import Family, MappingError, ModelShape, hf_dict, rope

__all__ = ["FAMILIES", "Family", "ModelShape", "architecture", "get_family", "gpt_model_kwargs", "hf_dict",
           "layer_spec", "padded_vocab_size", "rope", "shape", "te_available", "transformer_config"]

FAMILIES: dict[str, Family] = {f.architecture: f for f in (
    Family("qwen2", "Qwen2ForCausalLM", qkv_bias=True),
    Family("qwen3", "Qwen3ForCausalLM", qk_norm=True),
    Family("llama", "LlamaForCausalLM"),
)}


def architecture(hf_config: Any) -> str:
    """The HF architecture: `architectures[0]`, else the registered one of `model_type`."""
    cfg = hf_dict(hf_config)
    archs = cfg.get("architectures") or []
    if archs:
        return archs[0]
    by_type = {f.name: f.architecture for f in FAMILIES.values()}
    return by_type.get(cfg.get("model_type", ""), f"<model_type {cfg.get('model_type')!r}>")


def get_family(hf_config: Any) -> Family:
    arch = architecture(hf_config)
    if arch not in FAMILIES:
        raise MappingError(f"unsupported architecture {arch}: supported are {', '.join(sorted(FAMILIES))}")
    return FAMILIES[arch]


def shape(hf_config: Any) -> ModelShape:
    """The validated dimensions of a registered model (MappingError names an unsupported or bad one)."""
    cfg = hf_dict(hf_config)
    return get_family(cfg).shape(cfg)


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of divisible_by * TP (each TP shard equal)."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def transformer_config(hf_config: Any, *, tp: int = 1, pp: int = 1, vpp: int | None = None,
                       dtype: str = "fp32", sequence_parallel: bool = False,
                       recompute: str = "none", **overrides: Any):
    """The Megatron TransformerConfig for this HF config and parallel layout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from harmony_mcore import device
    from harmony_mcore.dtypes import torch_dtype

    cfg = hf_dict(hf_config)
    family = get_family(cfg)
    family.check(cfg)
    dt = torch_dtype(dtype)
    on_gpu = device.on_gpu
    kwargs: dict[str, Any] = family.transformer_kwargs(cfg) | dict(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=sequence_parallel and tp > 1,
        params_dtype=dt,
        pipeline_dtype=dt,
        bf16=dt == torch_dtype("bf16"),
        fp16=dt == torch_dtype("fp16"),
        use_cpu_initialization=not on_gpu,
        # Fused kernels need CUDA (and some need TE/apex); the jit-fused bias+SwiGLU is fine on GPU.
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # On gloo, batched p2p between the same two ranks (PP=2: next == prev) pairs messages by order,
        # which garbled the interleaved (virtual PP) 1F1B schedule in tests/integration/policy; separate ops are exact.
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
    m = shape(cfg)
    theta, factor = rope(cfg)
    return dict(
        vocab_size=padded_vocab_size(m.vocab, tp),
        max_sequence_length=cfg.get("max_position_embeddings", 4096),
        position_embedding_type="rope",
        rotary_base=int(theta),
        rope_scaling=factor is not None,
        rope_scaling_factor=factor if factor is not None else 8.0,
        share_embeddings_and_output_weights=m.tied,
    )


def te_available() -> bool:
    """Transformer Engine imports and a GPU is present (its kernels need one)."""
    from harmony_mcore import device

    if not device.on_gpu:
        return False
    try:
        import transformer_engine  # noqa: F401
        return True
    except Exception:
        return False


def layer_spec(hf_config: Any, *, use_te: bool | None = None):
    """The family's Transformer Engine spec when TE imports (and a GPU is present), its local spec otherwise."""
    return get_family(hf_config).layer_spec(te_available() if use_te is None else use_te)
