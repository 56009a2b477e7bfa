"""Shared pieces of the policy's multi-process tests: tiny HF configs, random HF models, plain-torch references."""

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


def hf_row_logprobs(hf: torch.nn.Module, ids: torch.Tensor, temperature: float):
    """Plain-torch reference for one unpadded row, for tokens t >= 1: (log p(token_t | <t), entropy,
    self-certainty logsumexp(z) - mean(z)) of the distribution that produced token t."""
    logits = hf(ids[None]).logits[0, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, ids[1:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    self_certainty = torch.logsumexp(logits, -1) - logits.mean(-1)
    return logp, entropy, self_certainty


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


@torch.no_grad()
def load_hf_weights(policy, state_dict: dict[str, torch.Tensor]) -> None:
    """An HF state dict into this rank's shards of `policy` through the bridge's mapping table, then into
    its reference (the trainer loads converted checkpoints instead: bridge.dist_ckpt.load_model_weights)."""
    from megatron.core import parallel_state as ps

    from harmony_mcore.bridge.mapping import get_mapping
    from harmony_mcore.models.builder import global_name

    mapping = get_mapping(policy.hf_config)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    for module in policy.modules:
        for name, param in module.named_parameters():
            param.copy_(hf_weight_shard(mapping, global_name(module, name), state_dict.__getitem__, module.vocab_size,
                                        tp, rank))
    policy.sync_reference()


def hf_weight_shard(mapping, mcore_name: str, get, padded_vocab: int, tp: int, tp_rank: int) -> torch.Tensor:
    """TP shard `tp_rank` of the Megatron tensor `mcore_name` (global layer numbers) built from HF tensors."""
    if mapping.tied and mcore_name == "output_layer.weight":
        mcore_name = "embedding.word_embeddings.weight"  # the last PP stage's copy of the tied embedding
    full = mapping.hf_to_mcore(mcore_name, [get(n) for n in mapping.hf_sources(mcore_name)], padded_vocab)
    return mapping.tp_split(mcore_name, full, tp)[tp_rank]
