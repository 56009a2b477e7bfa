"""Tiny random HF models saved to disk, shared by the conversion tests and their torchrun script."""

from __future__ import annotations

from pathlib import Path

import torch

# Each covers one family's features: qkv bias (Qwen2), q/k norm (Qwen3), tied embeddings (Qwen2,
# Llama 3.2 style), vocabularies that need padding (250, 300), and several KV-group counts.
CONFIGS = {
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=250, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=128),
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=256, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=16, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
                  max_position_embeddings=128),
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=300, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  tie_word_embeddings=True, rope_theta=5e5, rms_norm_eps=1e-5, max_position_embeddings=128),
    "qwen3_mqa": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=200, hidden_size=48,
                      intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=16, tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6,
                      max_position_embeddings=128),
}


def hf_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(CONFIGS[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # HF initialises norms to 1: randomise so a swapped norm would show
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def save_hf_model(name: str, path: Path, dtype: torch.dtype = torch.float32, **save_kw) -> Path:
    hf_model(name, dtype).save_pretrained(path, **save_kw)
    return path


def save_char_tokenizer(path: Path, vocab_size: int) -> None:
    """A character-level tokenizer (ids < vocab_size) saved next to a tiny model; no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)][: vocab_size - 1]
    vocab = {"<unk>": 0, **{c: k + 1 for k, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
