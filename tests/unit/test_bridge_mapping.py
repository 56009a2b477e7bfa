"""The HF <-> Megatron mapping table: layouts checked against independent per-head constructions."""

import pytest
import torch

from harmony_mcore.bridge.mapping import MappingError, get_mapping, shift_layer, strip_wrappers
from harmony_mcore.config import ConfigError


def _cfg(arch="Qwen3ForCausalLM", heads=8, groups=2, layers=3, tied=False, vocab=100, **kw):
    return {"architectures": [arch], "num_hidden_layers": layers, "hidden_size": 32, "num_attention_heads": heads,
            "num_key_value_heads": groups, "head_dim": 8, "intermediate_size": 48, "vocab_size": vocab,
            "tie_word_embeddings": tied, **kw}


def _qkv_reference(q, k, v, heads, groups, d):
    """Megatron's fused QKV rows built head by head: per group [its query heads, its key, its value]."""
    r = heads // groups
    rows = []
    for g in range(groups):
        rows += [q[(g * r + j) * d:(g * r + j + 1) * d] for j in range(r)]
        rows += [k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    return torch.cat(rows)


@pytest.mark.parametrize("heads,groups", [(8, 1), (8, 2), (8, 8), (4, 4)])  # (4, 4): q, k, v all square
def test_qkv_interleave_matches_per_head_layout_and_inverts(heads, groups):
    m = get_mapping(_cfg(heads=heads, groups=groups))
    d, h = 8, 32
    q, k, v = torch.randn(heads * d, h), torch.randn(groups * d, h), torch.randn(groups * d, h)
    name = "decoder.layers.1.self_attention.linear_qkv.weight"
    fused = m.hf_to_mcore(name, [q, k, v])
    assert torch.equal(fused, _qkv_reference(q, k, v, heads, groups, d))
    back = dict(m.mcore_to_hf(name, fused))
    assert list(back) == [f"model.layers.1.self_attn.{x}_proj.weight" for x in "qkv"]
    for x, want in zip("qkv", (q, k, v)):
        assert torch.equal(back[f"model.layers.1.self_attn.{x}_proj.weight"], want), x


def test_qkv_bias_for_qwen2_only():
    q2 = get_mapping(_cfg("Qwen2ForCausalLM"))
    names = q2.mcore_names()
    assert "decoder.layers.0.self_attention.linear_qkv.bias" in names
    assert "decoder.layers.0.self_attention.q_layernorm.weight" not in names
    q, k, v = torch.randn(64), torch.randn(16), torch.randn(16)
    fused = q2.hf_to_mcore("decoder.layers.0.self_attention.linear_qkv.bias", [q, k, v])
    assert torch.equal(fused, _qkv_reference(q, k, v, 8, 2, 8))
    q3 = get_mapping(_cfg())
    assert "decoder.layers.2.self_attention.k_layernorm.weight" in q3.mcore_names()
    assert not any("bias" in n for n in q3.mcore_names())


def test_tp_shards_hold_whole_query_groups():
    m = get_mapping(_cfg(heads=8, groups=4))
    d, h = 8, 32
    q, k, v = torch.randn(64, h), torch.randn(32, h), torch.randn(32, h)
    name = "decoder.layers.0.self_attention.linear_qkv.weight"
    shards = m.tp_split(name, m.hf_to_mcore(name, [q, k, v]), 2)
    # rank 1 owns groups 2 and 3: query heads 4..7, key/value heads 2..3
    assert torch.equal(shards[1], _qkv_reference(q[32:], k[16:], v[16:], 4, 2, d))
    assert torch.equal(m.tp_merge(name, shards), m.hf_to_mcore(name, [q, k, v]))


def test_fc1_tp_shards_are_gate_up_pairs():
    m = get_mapping(_cfg())
    gate, up = torch.randn(48, 32), torch.randn(48, 32)
    name = "decoder.layers.0.mlp.linear_fc1.weight"
    full = m.hf_to_mcore(name, [gate, up])
    shards = m.tp_split(name, full, 4)
    for t, s in enumerate(shards):
        assert torch.equal(s, torch.cat([gate[t * 12:(t + 1) * 12], up[t * 12:(t + 1) * 12]]))
    assert torch.equal(m.tp_merge(name, shards), full)
    assert not torch.equal(torch.cat(shards), full)  # the naive concat is wrong for TP > 1


def test_row_column_replicated_and_vocab_padding():
    m = get_mapping(_cfg(vocab=100))
    o = torch.randn(32, 64)
    proj = "decoder.layers.0.self_attention.linear_proj.weight"
    assert [s.shape for s in m.tp_split(proj, o, 2)] == [(32, 32)] * 2
    assert torch.equal(m.tp_merge(proj, m.tp_split(proj, o, 2)), o)
    emb = torch.randn(100, 32)
    padded = m.hf_to_mcore("embedding.word_embeddings.weight", [emb], padded_vocab=128)
    assert padded.shape == (128, 32) and torch.equal(padded[:100], emb) and not padded[100:].any()
    ((name, back),) = m.mcore_to_hf("embedding.word_embeddings.weight", padded)
    assert name == "model.embed_tokens.weight" and torch.equal(back, emb)
    norm = "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"
    assert m.tp_layout(norm) == "replicated"


def test_te_and_local_norm_names_and_layer_numbers():
    m = get_mapping(_cfg())
    w = torch.randn(32)
    for name in ("module.module.decoder.layers.2.input_layernorm.weight",
                 "decoder.layers.2.self_attention.linear_qkv.layer_norm_weight"):
        assert m.mcore_to_hf(name, w)[0][0] == "model.layers.2.input_layernorm.weight"
    assert m.mcore_to_hf("decoder.layers.1.pre_mlp_layernorm.weight", w)[0][0] == \
        "model.layers.1.post_attention_layernorm.weight"
    assert shift_layer("decoder.layers.1.mlp.linear_fc2.weight", 3) == "decoder.layers.4.mlp.linear_fc2.weight"
    assert shift_layer("decoder.final_layernorm.weight", 3) == "decoder.final_layernorm.weight"
    assert strip_wrappers("module.output_layer.weight") == "output_layer.weight"
    with pytest.raises(MappingError, match="layer 3 outside"):
        m.rule("decoder.layers.3.mlp.linear_fc2.weight")
    local = m.mcore_names("local")
    assert "decoder.layers.0.input_layernorm.weight" in local and len(local) == len(m.mcore_names())


def test_tied_output_layer_is_skipped_and_untied_is_mapped():
    tied = get_mapping(_cfg(arch="LlamaForCausalLM", tied=True))
    assert tied.mcore_to_hf("output_layer.weight", torch.randn(100, 32)) == []
    assert "lm_head.weight" not in tied.hf_shapes and "output_layer.weight" not in tied.mcore_names()
    untied = get_mapping(_cfg(arch="LlamaForCausalLM"))
    assert untied.mcore_to_hf("output_layer.weight", torch.randn(128, 32))[0][1].shape == (100, 32)


def test_every_hf_tensor_is_used_exactly_once():
    for arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM"):
        m = get_mapping(_cfg(arch=arch))
        used = [h for n in m.mcore_names() for h in m.hf_sources(n)]
        assert sorted(used) == sorted(m.hf_shapes) and len(set(used)) == len(used)


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unsupported architecture MistralForCausalLM.*Qwen3ForCausalLM"):
        get_mapping(_cfg(arch="MistralForCausalLM"))
    with pytest.raises(MappingError, match="unmapped megatron tensor"):
        get_mapping(_cfg()).rule("decoder.layers.0.mlp.router.weight")
    with pytest.raises(MappingError, match="attention_bias"):
        get_mapping(_cfg(arch="LlamaForCausalLM", attention_bias=True))
    m = get_mapping(_cfg())
    with pytest.raises(MappingError, match="shape"):
        m.hf_to_mcore("decoder.layers.0.mlp.linear_fc2.weight", [torch.randn(32, 47)])
    with pytest.raises(MappingError, match="does not divide num_key_value_heads"):
        m.check_tp(4)
