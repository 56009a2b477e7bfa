"""Shared pieces of the policy's multi-process tests: tiny HF configs, random HF models, a test-only loader.

The loader writes HF weights into Megatron chunks (local spec) using the layout facts of
shared/DESIGN.md. It stays in tests/ until harmony_mcore.bridge has the shared mapping tables.
"""

from __future__ import annotations

import torch
import transformers

COMMON = dict(vocab_size=150, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=16384, hidden_act="silu")
TINY = {
    "qwen2": {**COMMON, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1e6,
              "tie_word_embeddings": True},
    # head_dim 32 != hidden/heads = 16
    "qwen3": {**COMMON, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "rope_theta": 1e6,
              "head_dim": 32, "tie_word_embeddings": False},
    # llama3 rope scaling: with theta 5e5 the low frequencies fall in the scaled band
    "llama": {**COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 500000.0,
              "tie_word_embeddings": True,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}},
}
_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
            "llama": ("LlamaConfig", "LlamaForCausalLM")}


def hf_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A random fp32 HF model; every parameter (biases and norms too) random so each mapping matters."""
    cfg_cls, model_cls = (getattr(transformers, n) for n in _CLASSES[name])
    cfg = {k: v for k, v in TINY[name].items() if k not in ("architectures", "model_type")}
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**cfg)).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in pname else 0.08 * torch.randn_like(p))
    return model


def megatron_full_state(hf_sd: dict, cfg: dict, padded_vocab: int) -> dict:
    """HF state dict -> unsharded Megatron tensors, global layer numbers, local-spec names."""
    H, nh, ng = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh

    def pad(w):
        return torch.cat([w, w.new_zeros(padded_vocab - w.shape[0], *w.shape[1:])])

    out = {"embedding.word_embeddings.weight": pad(hf_sd["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": hf_sd["model.norm.weight"],
           "output_layer.weight": pad(hf_sd.get("lm_head.weight", hf_sd["model.embed_tokens.weight"]))}
    for i in range(cfg["num_hidden_layers"]):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        for kind in ("weight", "bias"):
            if h + f"self_attn.q_proj.{kind}" not in hf_sd:
                continue
            q = hf_sd[h + f"self_attn.q_proj.{kind}"].reshape(ng, nh // ng * hd, -1)
            k = hf_sd[h + f"self_attn.k_proj.{kind}"].reshape(ng, hd, -1)
            v = hf_sd[h + f"self_attn.v_proj.{kind}"].reshape(ng, hd, -1)
            qkv = torch.cat([q, k, v], dim=1)
            out[m + f"self_attention.linear_qkv.{kind}"] = qkv.reshape(-1, H) if kind == "weight" else qkv.reshape(-1)
        out[m + "self_attention.linear_proj.weight"] = hf_sd[h + "self_attn.o_proj.weight"]
        out[m + "input_layernorm.weight"] = hf_sd[h + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf_sd[h + "post_attention_layernorm.weight"]
        if h + "self_attn.q_norm.weight" in hf_sd:
            out[m + "self_attention.q_layernorm.weight"] = hf_sd[h + "self_attn.q_norm.weight"]
            out[m + "self_attention.k_layernorm.weight"] = hf_sd[h + "self_attn.k_norm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([hf_sd[h + "mlp.gate_proj.weight"], hf_sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = hf_sd[h + "mlp.down_proj.weight"]
    return out


def global_name(module, local: str) -> str:
    parts = local.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(module.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)


def local_shard(module, local: str, full: torch.Tensor) -> torch.Tensor:
    """This TP rank's shard of a full Megatron tensor (fc1: gate and up sharded separately)."""
    from megatron.core import parallel_state as ps

    param = dict(module.named_parameters())[local]
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if local.endswith("linear_fc1.weight"):
        gate, up = full.chunk(2)
        return torch.cat([gate.chunk(tp)[r], up.chunk(tp)[r]])
    return full.chunk(tp, dim=param.partition_dim)[r]


@torch.no_grad()
def load_hf(modules: list, hf: torch.nn.Module, cfg: dict) -> None:
    padded = modules[0].vocab_size
    full = megatron_full_state(hf.state_dict(), cfg, padded)
    for module in modules:
        names = [n for n, _ in module.named_parameters()]
        state = {n: local_shard(module, n, full[global_name(module, n)]) for n in names}
        missing, unexpected = module.load_state_dict(state, strict=False)
        assert not unexpected and all("_extra_state" in k for k in missing), (missing, unexpected)


def hf_row_logprobs(hf: torch.nn.Module, ids: torch.Tensor, temperature: float):
    """Plain-torch reference for one unpadded row: (log p(token_t | <t) for t>=1, entropy at t>=1)."""
    logits = hf(ids[None]).logits[0, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[1:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def make_batch(seed: int, rows: int = 6, width: int = 14, vocab: int = 150):
    """Left-padded prompts + right-padded responses, one contiguous run of tokens per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, width), generator=g)
    attn = torch.zeros(rows, width, dtype=torch.long)
    resp = torch.zeros(rows, width, dtype=torch.long)
    for r in range(rows):
        prompt_pad = int(torch.randint(0, 4, (1,), generator=g))
        end = width - int(torch.randint(0, 4, (1,), generator=g))
        attn[r, prompt_pad:end] = 1
        resp[r, prompt_pad + 3:end] = 1
        ids[r, :prompt_pad] = 0
        ids[r, end:] = 0
    return ids, attn, resp
