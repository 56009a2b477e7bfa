"""What a model family is: one object that says how an HF `config.json` becomes a Megatron model.

A `Family` answers every question the rest of the code asks about an architecture, so a new one is
one entry in `harmony_mcore.models.families.FAMILIES` (a new kind of block, e.g. mixture-of-experts,
is a subclass in its own file that overrides the methods below):

- `shape(cfg)`: the validated dimensions (`ModelShape`), read once; `harmony plan` computes on them;
- `check(cfg)`: what the Megatron policy cannot build (sliding window, other activations, rope kinds);
- `transformer_kwargs(cfg)`: the architecture part of Megatron's `TransformerConfig`;
- `layer_spec(use_te)`: Megatron's layer spec (Transformer Engine or local);
- `rules(shape)` / `hf_shapes(shape)`: the weight-mapping table, one `Rule` per Megatron parameter,
  which `harmony_mcore.bridge.mapping` runs in both directions (HF -> Megatron and back).

Layout facts behind the dense table (megatron-core 0.16 `gpt_layer_specs.py`, `attention.py`; the
transformers modelling files of Llama, Qwen2 and Qwen3):
- `linear_qkv` is G blocks (G = KV heads) of [r query heads | 1 key head | 1 value head] rows,
  r = H / G; TP shards hold whole groups, so the TP split is a plain dim-0 chunk.
- `linear_fc1` is [gate; up] on one rank and [gate_t; up_t] on each TP rank.
- Norm names differ between the TE spec (fused into the next linear: `...layer_norm_weight`)
  and the local spec (`input_layernorm`, `pre_mlp_layernorm`); both are accepted.
- Embedding and output layer may carry padded vocab rows: trimmed on export, zero-padded on import.
- With tied embeddings there is no `output_layer.weight`; a PP last stage's copy is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from harmony_mcore.config import ConfigError


class MappingError(ConfigError):
    """A model config or tensor that its family cannot handle, with the fix in the message."""


def hf_dict(hf_config: Any) -> dict[str, Any]:
    """A config.json dict from a dict or a transformers PretrainedConfig."""
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise ConfigError(f"model config must be a config.json dict or a transformers config, got {type(hf_config)}")


# Tensor-parallel layouts of megatron params (how a full tensor splits over TP ranks).
REPLICATED, COLUMN, ROW, GATE_UP, VOCAB = "replicated", "column", "row", "gate_up", "vocab"


@dataclass(frozen=True)
class Rule:
    """One megatron param <-> one or more HF tensors. Names are templates with `{i}` = layer."""

    mcore: str  # TE-spec name; also the dist-checkpoint key (minus the layer number)
    hf: tuple[str, ...]
    tp: str  # one of the TP layouts above
    local: str | None = None  # local-spec spelling, when it differs

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore

    @property
    def checkpoint_key(self) -> str:
        """Megatron's sharded key: layers are stacked along a leading layer axis."""
        return self.mcore.replace("layers.{i}.", "layers.")


@dataclass(frozen=True)
class ModelShape:
    """The numbers of an HF config.json that weights, memory and FLOPs depend on."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    qkv_bias: bool
    qk_norm: bool


def _size(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """A positive integer dimension of the config (a missing, zero or non-integer one is a MappingError)."""
    value = cfg.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MappingError(f"config.json: {key}={value!r}; it must be a positive integer (is this the model's "
                           "own config.json?)")
    return value


# Megatron's llama3 rope scaling fixes these (megatron/core/models/common/embeddings/rotary_pos_embedding.py).
_MEGATRON_LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


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


@dataclass(frozen=True)
class Family:
    """A dense decoder family: GQA attention with RoPE, SwiGLU MLP, RMSNorm (Llama, Qwen2, Qwen3)."""

    name: str  # HF model_type
    architecture: str  # HF `architectures[0]`
    qkv_bias: bool = False  # Qwen2/2.5: biases on the q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm on each query/key head

    # ---- dimensions and support ----------------------------------------------------------------
    def shape(self, cfg: dict[str, Any]) -> ModelShape:
        """The validated dimensions (MappingError names a bad one)."""
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag) and not (flag == "attention_bias" and self.qkv_bias):
                raise MappingError(f"{self.architecture} with {flag}=true is not supported: only Qwen2 has (q/k/v) "
                                   "biases")
        heads = _size(cfg, "num_attention_heads")
        hidden = _size(cfg, "hidden_size")
        kv_heads = _size(cfg, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise MappingError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        return ModelShape(arch=self.architecture, layers=_size(cfg, "num_hidden_layers"), hidden=hidden, heads=heads,
                          kv_heads=kv_heads, head_dim=_size(cfg, "head_dim", hidden // heads),
                          ffn=_size(cfg, "intermediate_size"), vocab=_size(cfg, "vocab_size"),
                          tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=self.qkv_bias,
                          qk_norm=self.qk_norm)

    def check(self, cfg: dict[str, Any]) -> None:
        """Raise ConfigError for a config the Megatron policy cannot build (conversion does not need this)."""
        if cfg.get("use_sliding_window"):
            raise ConfigError("use_sliding_window=true is not supported: set it to false in config.json")
        rope(cfg)
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"hidden_act={act!r} is not supported: the registered families use silu (SwiGLU)")

    # ---- the Megatron model --------------------------------------------------------------------
    def transformer_kwargs(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The architecture's part of Megatron's TransformerConfig (dropout off: RL fine-tuning)."""
        import torch.nn.functional as F

        m = self.shape(cfg)
        return dict(
            num_layers=m.layers, hidden_size=m.hidden, ffn_hidden_size=m.ffn, num_attention_heads=m.heads,
            num_query_groups=m.kv_heads, kv_channels=m.head_dim,
            normalization="RMSNorm", layernorm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
            gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
            add_qkv_bias=self.qkv_bias, qk_layernorm=self.qk_norm,
            hidden_dropout=0.0, attention_dropout=0.0,
        )

    def layer_spec(self, use_te: bool):
        """Megatron's layer spec. Parameter names per layer `decoder.layers.{i}.`: see `rules`; the local
        spec spells the two pre-norms `input_layernorm`/`pre_mlp_layernorm` (the TE spec fuses them into
        `linear_qkv`/`linear_fc1` as `layer_norm_weight`)."""
        from megatron.core.models.gpt import gpt_layer_specs as specs

        if use_te:
            return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=self.qk_norm)
        return specs.get_gpt_layer_local_spec(qk_layernorm=self.qk_norm, normalization="RMSNorm")

    # ---- the weight mapping --------------------------------------------------------------------
    def rules(self, m: ModelShape) -> list[Rule]:
        """The mapping table: non-layer params first, then one layer's (`{i}`), then the rest."""
        d, p = "decoder.layers.{i}.", "model.layers.{i}."
        rules = [Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB)]
        rules.append(Rule(d + "self_attention.linear_qkv.layer_norm_weight", (p + "input_layernorm.weight",),
                          REPLICATED, local=d + "input_layernorm.weight"))
        rules.append(Rule(d + "self_attention.linear_qkv.weight", tuple(p + f"self_attn.{x}_proj.weight" for x in "qkv"),
                          COLUMN))
        if self.qkv_bias:
            rules.append(Rule(d + "self_attention.linear_qkv.bias",
                              tuple(p + f"self_attn.{x}_proj.bias" for x in "qkv"), COLUMN))
        if self.qk_norm:
            rules.append(Rule(d + "self_attention.q_layernorm.weight", (p + "self_attn.q_norm.weight",), REPLICATED))
            rules.append(Rule(d + "self_attention.k_layernorm.weight", (p + "self_attn.k_norm.weight",), REPLICATED))
        rules.append(Rule(d + "self_attention.linear_proj.weight", (p + "self_attn.o_proj.weight",), ROW))
        rules.append(Rule(d + "mlp.linear_fc1.layer_norm_weight", (p + "post_attention_layernorm.weight",),
                          REPLICATED, local=d + "pre_mlp_layernorm.weight"))
        rules.append(Rule(d + "mlp.linear_fc1.weight", (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), GATE_UP))
        rules.append(Rule(d + "mlp.linear_fc2.weight", (p + "mlp.down_proj.weight",), ROW))
        rules.append(Rule("decoder.final_layernorm.weight", ("model.norm.weight",), REPLICATED))
        if not m.tied:
            rules.append(Rule("output_layer.weight", ("lm_head.weight",), VOCAB))
        return rules

    def hf_shapes(self, m: ModelShape) -> dict[str, tuple[int, ...]]:
        """Every HF tensor name the table uses -> shape, in the order HF models list them."""
        h, d, q, kv = m.hidden, m.head_dim, m.heads * m.head_dim, m.kv_heads * m.head_dim
        per_layer = {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
            "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
            "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
            "self_attn.o_proj.weight": (h, q),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (m.ffn, h), "mlp.up_proj.weight": (m.ffn, h), "mlp.down_proj.weight": (h, m.ffn),
        }
        wanted = {n for r in self.rules(m) for n in r.hf}
        out = {"model.embed_tokens.weight": (m.vocab, h)}
        for i in range(m.layers):
            for suffix, shape in per_layer.items():
                if f"model.layers.{{i}}.{suffix}" in wanted:
                    out[f"model.layers.{i}.{suffix}"] = shape
        out["model.norm.weight"] = (h,)
        if not m.tied:
            out["lm_head.weight"] = (m.vocab, h)
        return out
