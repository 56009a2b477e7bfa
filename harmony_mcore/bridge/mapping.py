"""HF <-> Megatron-Core parameter mapping: one table per model family, run in both directions.

The offline converters (conversion/) and the live weight-sync bridge (bridge/export.py) both use
this module, so a layout fact is written exactly once. Everything here is per tensor and pure:

    m = get_mapping(hf_config)
    m.hf_to_mcore("decoder.layers.3.mlp.linear_fc1.weight", [gate, up])  -> [gate; up]
    m.mcore_to_hf("decoder.layers.3.mlp.linear_fc1.weight", fc1)          -> [(hf_name, t), ...]
    m.tp_split(name, full, tp) / m.tp_merge(name, shards)                 -> TP layout rules
    shift_layer(name, offset)                                             -> local <-> global layer

Megatron names use *global* layer numbers; a PP stage's local names are shifted with
`shift_layer(name, +stage_offset)` (offset from megatron's `get_transformer_layer_offset`).
Layout facts (shared/DESIGN.md, reference/anchors.md §3b):
- `linear_qkv` is G blocks (G = KV heads) of [r query heads | 1 key head | 1 value head] rows,
  r = H / G; TP shards hold whole groups, so the TP split is a plain dim-0 chunk.
- `linear_fc1` is [gate; up] on one rank and [gate_t; up_t] on each TP rank.
- Norm names differ between the TE spec (fused into the next linear: `...layer_norm_weight`)
  and the local spec (`input_layernorm`, `pre_mlp_layernorm`); both are accepted.
- Embedding and output layer may carry padded vocab rows: trimmed on export, zero-padded on import.
- With tied embeddings there is no `output_layer.weight`; a PP last stage's copy is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping as TMapping, Sequence

import torch

from harmony_mcore.config import ConfigError


class MappingError(ConfigError):
    """A tensor or config that the mapping cannot handle, with the fix in the message."""


@dataclass(frozen=True)
class Family:
    name: str  # HF model_type
    qkv_bias: bool  # Qwen2/2.5: biases on q/k/v projections
    qk_norm: bool  # Qwen3: RMSNorm on each query/key head


# HF architecture -> family: the one registry (harmony_mcore.models.families derives its own from it).
FAMILIES: dict[str, Family] = {
    "Qwen2ForCausalLM": Family("qwen2", qkv_bias=True, qk_norm=False),
    "Qwen3ForCausalLM": Family("qwen3", qkv_bias=False, qk_norm=True),
    "LlamaForCausalLM": Family("llama", qkv_bias=False, qk_norm=False),
}


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


def _rules(family: Family, tied: bool) -> list[Rule]:
    d, p = "decoder.layers.{i}.", "model.layers.{i}."
    rules = [Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), VOCAB)]
    rules.append(Rule(d + "self_attention.linear_qkv.layer_norm_weight", (p + "input_layernorm.weight",),
                      REPLICATED, local=d + "input_layernorm.weight"))
    qkv = tuple(p + f"self_attn.{x}_proj.weight" for x in "qkv")
    rules.append(Rule(d + "self_attention.linear_qkv.weight", qkv, COLUMN))
    if family.qkv_bias:
        rules.append(Rule(d + "self_attention.linear_qkv.bias",
                          tuple(p + f"self_attn.{x}_proj.bias" for x in "qkv"), COLUMN))
    if family.qk_norm:
        rules.append(Rule(d + "self_attention.q_layernorm.weight", (p + "self_attn.q_norm.weight",), REPLICATED))
        rules.append(Rule(d + "self_attention.k_layernorm.weight", (p + "self_attn.k_norm.weight",), REPLICATED))
    rules.append(Rule(d + "self_attention.linear_proj.weight", (p + "self_attn.o_proj.weight",), ROW))
    rules.append(Rule(d + "mlp.linear_fc1.layer_norm_weight", (p + "post_attention_layernorm.weight",),
                      REPLICATED, local=d + "pre_mlp_layernorm.weight"))
    rules.append(Rule(d + "mlp.linear_fc1.weight", (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), GATE_UP))
    rules.append(Rule(d + "mlp.linear_fc2.weight", (p + "mlp.down_proj.weight",), ROW))
    rules.append(Rule("decoder.final_layernorm.weight", ("model.norm.weight",), REPLICATED))
    if not tied:
        rules.append(Rule("output_layer.weight", ("lm_head.weight",), VOCAB))
    return rules


# HF names that carry no weights a model needs (old Llama checkpoints store rotary buffers).
_IGNORABLE_HF = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, TMapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _template(name: str) -> tuple[str, int | None]:
    """'decoder.layers.7.mlp.x' -> ('decoder.layers.{i}.mlp.x', 7)."""
    m = _LAYER.search(name)
    if m is None:
        return name, None
    return name[: m.start()] + ".layers.{i}." + name[m.end():], int(m.group(1))


def _size(hf_config: Any, key: str, default: int | None = None) -> int:
    """A positive integer dimension of the config (a missing, zero or non-integer one is a MappingError)."""
    value = _get(hf_config, key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MappingError(f"config.json: {key}={value!r}; it must be a positive integer (is this the model's "
                           "own config.json?)")
    return value


def shift_layer(name: str, offset: int) -> str:
    """Renumber the layer in a name by `offset` (local PP-stage number + stage offset = global)."""
    tmpl, i = _template(name)
    return name if i is None else tmpl.replace("{i}", str(i + offset))


def strip_wrappers(name: str) -> str:
    """Drop the `module.` prefixes that DDP/Float16Module wrappers add to param names."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


class Mapping:
    """The mapping for one model (family + dimensions from its HF config)."""

    def __init__(self, hf_config: Any):
        archs = _get(hf_config, "architectures") or []
        by_type = {f.name: a for a, f in FAMILIES.items()}
        arch = archs[0] if archs else by_type.get(_get(hf_config, "model_type"), "<none>")
        if arch not in FAMILIES:
            raise MappingError(f"unsupported architecture {arch}: supported are {', '.join(sorted(FAMILIES))}")
        self.arch, self.family = arch, FAMILIES[arch]
        for flag in ("attention_bias", "mlp_bias"):
            if _get(hf_config, flag, False) and not (flag == "attention_bias" and self.family.qkv_bias):
                raise MappingError(f"{self.arch} with {flag}=true is not supported: only Qwen2 has (q/k/v) biases")
        self.num_layers = _size(hf_config, "num_hidden_layers")
        self.hidden = _size(hf_config, "hidden_size")
        self.heads = _size(hf_config, "num_attention_heads")
        self.groups = _size(hf_config, "num_key_value_heads", self.heads)
        self.head_dim = _size(hf_config, "head_dim", self.hidden // self.heads)
        self.ffn = _size(hf_config, "intermediate_size")
        self.vocab = _size(hf_config, "vocab_size")
        self.tied = bool(_get(hf_config, "tie_word_embeddings", False))
        if self.heads % self.groups:
            raise MappingError(f"num_attention_heads={self.heads} is not a multiple of "
                               f"num_key_value_heads={self.groups}")
        self.rules = _rules(self.family, self.tied)
        self._by_name = {r.mcore: r for r in self.rules} | {r.local: r for r in self.rules if r.local}
        self._by_hf = {h: r for r in self.rules for h in r.hf}

    # ---- names ----------------------------------------------------------------------------
    def rule(self, mcore_name: str) -> tuple[Rule, int | None]:
        """The rule and global layer number of a megatron param name (TE or local spelling)."""
        tmpl, i = _template(strip_wrappers(mcore_name))
        rule = self._by_name.get(tmpl)
        if rule is None:
            raise MappingError(f"unmapped megatron tensor {mcore_name!r} for {self.arch}")
        if i is not None and not 0 <= i < self.num_layers:
            raise MappingError(f"{mcore_name!r}: layer {i} outside 0..{self.num_layers - 1}; "
                               "shift local PP-stage numbers to global ones first (shift_layer)")
        return rule, i

    def mcore_names(self, spec: str = "te") -> list[str]:
        """All megatron param names (global layer numbers), layer by layer; spec 'te' or 'local'."""
        names = [r.local if spec == "local" and r.local else r.mcore for r in self.rules]
        first = next(k for k, r in enumerate(self.rules) if r.per_layer)
        per_layer = [n for n, r in zip(names, self.rules) if r.per_layer]
        out = names[:first]
        for i in range(self.num_layers):
            out += [n.format(i=i) for n in per_layer]
        return out + [n for n, r in zip(names[first:], self.rules[first:]) if not r.per_layer]

    @cached_property
    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every HF tensor name -> shape, in the order HF models list them."""
        h, d, q, kv = self.hidden, self.head_dim, self.heads * self.head_dim, self.groups * self.head_dim
        base = {"model.embed_tokens.weight": (self.vocab, h)}
        per_layer = {
            "input_layernorm.weight": (h,),
            "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h),
            "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
            "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
            "self_attn.o_proj.weight": (h, q),
            "post_attention_layernorm.weight": (h,),
            "mlp.gate_proj.weight": (self.ffn, h), "mlp.up_proj.weight": (self.ffn, h),
            "mlp.down_proj.weight": (h, self.ffn),
        }
        wanted = {n for r in self.rules for n in r.hf}
        for i in range(self.num_layers):
            for suffix, shape in per_layer.items():
                if f"model.layers.{{i}}.{suffix}" in wanted:
                    base[f"model.layers.{i}.{suffix}"] = shape
        base["model.norm.weight"] = (h,)
        if not self.tied:
            base["lm_head.weight"] = (self.vocab, h)
        return base

    def hf_sources(self, mcore_name: str) -> list[str]:
        """The HF tensors a megatron param is built from (in `hf_to_mcore` argument order)."""
        rule, i = self.rule(mcore_name)
        return [h if i is None else h.format(i=i) for h in rule.hf]

    def mcore_shape(self, mcore_name: str, padded_vocab: int | None = None) -> tuple[int, ...]:
        """Full (TP-merged) shape of a megatron param."""
        rule, _ = self.rule(mcore_name)
        srcs = [self.hf_shapes[n] for n in self.hf_sources(mcore_name)]
        if rule.tp == VOCAB:
            return (padded_vocab or self.vocab, self.hidden)
        return (sum(s[0] for s in srcs),) + srcs[0][1:]

    def is_ignorable_hf(self, hf_name: str) -> bool:
        return bool(_IGNORABLE_HF.fullmatch(hf_name)) or (self.tied and hf_name == "lm_head.weight")

    # ---- values ---------------------------------------------------------------------------
    def hf_to_mcore(self, mcore_name: str, hf_tensors: Sequence[torch.Tensor],
                    padded_vocab: int | None = None) -> torch.Tensor:
        """Build the full megatron tensor from its HF sources (order of `hf_sources`)."""
        rule, _ = self.rule(mcore_name)
        if len(hf_tensors) != len(rule.hf):
            raise MappingError(f"{mcore_name}: expected {len(rule.hf)} HF tensors, got {len(hf_tensors)}")
        for name, t in zip(self.hf_sources(mcore_name), hf_tensors):
            if tuple(t.shape) != self.hf_shapes[name]:
                raise MappingError(f"{name}: shape {tuple(t.shape)}, expected {self.hf_shapes[name]} "
                                   f"from config.json")
        if rule.mcore.endswith("linear_qkv.weight") or rule.mcore.endswith("linear_qkv.bias"):
            return self._merge_qkv(*hf_tensors)
        if rule.tp == GATE_UP:
            return torch.cat(hf_tensors, dim=0)
        (t,) = hf_tensors
        if rule.tp == VOCAB and padded_vocab and padded_vocab > self.vocab:
            return torch.cat([t, t.new_zeros(padded_vocab - self.vocab, t.shape[1])], dim=0)
        return t

    def mcore_to_hf(self, mcore_name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Split a full megatron tensor into (HF name, tensor) pairs; [] for a tied output layer."""
        name = strip_wrappers(mcore_name)
        if self.tied and name == "output_layer.weight":
            return []  # the last PP stage's copy of the tied embedding
        rule, _ = self.rule(name)
        hf = self.hf_sources(name)
        expected = self.mcore_shape(name)
        if rule.tp == VOCAB:
            if tensor.dim() != 2 or tensor.shape[0] < self.vocab or tensor.shape[1] != self.hidden:
                raise MappingError(f"{name}: shape {tuple(tensor.shape)}, expected ({self.vocab}+padding, "
                                   f"{self.hidden})")
            return [(hf[0], tensor[: self.vocab])]
        if tuple(tensor.shape) != expected:
            raise MappingError(f"{name}: shape {tuple(tensor.shape)}, expected {expected} from config.json")
        if rule.mcore.endswith("linear_qkv.weight") or rule.mcore.endswith("linear_qkv.bias"):
            return list(zip(hf, self._split_qkv(tensor)))
        if rule.tp == GATE_UP:
            return list(zip(hf, tensor.chunk(2, dim=0)))
        return [(hf[0], tensor)]

    def _merge_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g, d, r = self.groups, self.head_dim, self.heads // self.groups
        rest = q.shape[1:]
        blocks = torch.cat([q.reshape(g, r * d, *rest), k.reshape(g, d, *rest), v.reshape(g, d, *rest)], dim=1)
        return blocks.reshape(g * (r + 2) * d, *rest)

    def _split_qkv(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, d, r = self.groups, self.head_dim, self.heads // self.groups
        rest = qkv.shape[1:]
        blocks = qkv.reshape(g, (r + 2) * d, *rest)
        q, k, v = blocks.split([r * d, d, d], dim=1)
        return (q.reshape(g * r * d, *rest).contiguous(), k.reshape(g * d, *rest).contiguous(),
                v.reshape(g * d, *rest).contiguous())

    # ---- tensor parallelism ---------------------------------------------------------------
    def tp_layout(self, mcore_name: str) -> str:
        return self.rule(mcore_name)[0].tp

    def check_tp(self, tp: int) -> None:
        """Raise unless this model can be split over `tp` ranks."""
        for what, n in (("num_key_value_heads", self.groups), ("num_attention_heads", self.heads),
                        ("intermediate_size", self.ffn)):
            if n % tp:
                raise MappingError(f"tensor parallel size {tp} does not divide {what}={n}: pick a TP "
                                   f"that divides it")

    def tp_split(self, mcore_name: str, full: torch.Tensor, tp: int) -> list[torch.Tensor]:
        """The TP shards of a full megatron tensor (vocab tensors must already be padded)."""
        layout = self.tp_layout(mcore_name)
        if layout == REPLICATED:
            return [full] * tp
        dim = 1 if layout == ROW else 0
        if full.shape[dim] % (2 * tp if layout == GATE_UP else tp):
            raise MappingError(f"{mcore_name}: dim {dim} of size {full.shape[dim]} does not split over "
                               f"TP={tp} (vocab tensors: pad to a multiple of TP first)")
        if layout == GATE_UP:
            gates, ups = (x.chunk(tp, dim=0) for x in full.chunk(2, dim=0))
            return [torch.cat([g, u], dim=0) for g, u in zip(gates, ups)]
        return list(full.chunk(tp, dim=dim))

    def tp_merge(self, mcore_name: str, shards: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverse of `tp_split`: the full tensor from the TP shards in rank order."""
        layout = self.tp_layout(mcore_name)
        if layout == REPLICATED or len(shards) == 1:
            return shards[0]
        if layout == GATE_UP:
            halves = [s.chunk(2, dim=0) for s in shards]
            return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
        return torch.cat(list(shards), dim=1 if layout == ROW else 0)


def get_mapping(hf_config: Any) -> Mapping:
    """The mapping for an HF config (dict from config.json or a transformers config)."""
    return Mapping(hf_config)
