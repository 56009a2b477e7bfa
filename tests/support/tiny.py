"""Small, download-free building blocks for the tests and the benchmark scripts.

`char_tokenizer` builds a character-level Hugging Face fast tokenizer (with EOS/PAD/chat template) on
the spot with the `tokenizers` library; `tiny_hf_config` gives config.json dicts of tiny models of the
supported families; `hf_param_count` counts a config's parameters with transformers (no weights made).
"""

from __future__ import annotations

import string
from typing import Any

DEFAULT_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET, roles: tuple[str, ...] = ("system", "user", "assistant")):
    """A PreTrainedTokenizerFast with one token per character of `alphabet`.

    Ids: 0 <pad>, 1 <eos>, 2 <bos>, then one special token per chat role marker (`<|role|>`), then the
    characters in `alphabet` order. Unknown characters raise at encode time (no <unk> on purpose:
    tests should notice them).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>"] + [f"<|{r}|>" for r in roles]
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # "." would skip newlines
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 16},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "head_dim": 16,
              "attention_bias": False, "mlp_bias": False},
}


def tiny_hf_config(family: str = "qwen3", **overrides: Any) -> dict[str, Any]:
    """config.json content of a tiny model (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 128, fp32)."""
    if family not in _FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r}: use one of {sorted(_FAMILY_DEFAULTS)}")
    cfg: dict[str, Any] = {
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
        "hidden_act": "silu", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    }
    cfg.update(_FAMILY_DEFAULTS[family])
    cfg.update(overrides)
    return cfg


def hf_param_count(hf: dict[str, Any]) -> int:
    """Parameters of the transformers model of a config.json dict (built on the meta device)."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[hf["model_type"]](**{k: v for k, v in hf.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # shared (tied) weights are counted once
