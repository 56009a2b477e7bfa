"""Weight export under TP=2, PP=2 (with 2 virtual stages) and TP2xPP2 (gloo) vs converting the same
trained shards offline."""

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from harmony_mcore.bridge.export import assign_buckets
from harmony_mcore.bridge.mapping import get_mapping, shift_layer
from tests.support.tiny import tiny_hf_config

SCRIPT = Path(__file__).parent / "scripts" / "bridge_export_dist.py"
BUCKET_BYTES = 20_000  # as in the script


def offline_convert(raw_files: list[Path], hf_cfg: dict) -> dict[str, torch.Tensor]:
    """Single-process conversion of all ranks' local shards with the conversion mapping."""
    mapping = get_mapping(hf_cfg)
    shards: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for f in raw_files:
        d = torch.load(f)
        for (name, offset), t in d["raw"].items():
            g = shift_layer(name, offset)
            if g in shards and d["tp"] in shards[g]:  # the same shard seen from two DP/PP ranks?
                raise AssertionError(f"{g} tp{d['tp']} appears twice")
            shards[g][d["tp"]] = t
    out = {}
    for name, by_tp in shards.items():
        if mapping.tied and name == "output_layer.weight":
            continue
        parts = [by_tp[r] for r in sorted(by_tp)]
        if mapping.tp_layout(name) == "replicated":
            assert all(torch.equal(parts[0], p) for p in parts), f"{name}: TP replicas diverged in training"
        out.update(mapping.mcore_to_hf(name, mapping.tp_merge(name, parts)))
    return out


@pytest.mark.dist
@pytest.mark.parametrize("tp,pp,vpp", [(2, 1, None), (1, 2, 2), (2, 2, None)], ids=["tp2", "pp2vpp2", "tp2pp2"])
def test_export_is_bit_identical_to_offline_conversion(tmp_path, run_torchrun, tp, pp, vpp):
    proc = run_torchrun(SCRIPT, tp * pp, str(tmp_path), str(tp), str(pp), *([str(vpp)] if vpp else []), timeout=400)
    assert proc.stdout.count("BRIDGE EXPORT OK") == tp * pp
    layers = max(2, pp * (vpp or 1))  # as in the script
    tags = {"qwen3": tiny_hf_config("qwen3", num_hidden_layers=layers),
            "llama_tied": tiny_hf_config("llama", tie_word_embeddings=True, num_hidden_layers=layers)}
    if pp == 1:
        tags["qwen2"] = tiny_hf_config("qwen2")
    for tag, cfg in tags.items():
        raw_files = sorted(tmp_path.glob(f"{tag}_raw_r*.pt"))
        assert len(raw_files) == tp * pp
        reference = offline_convert(raw_files, cfg)
        assert set(reference) == set(get_mapping(cfg).hf_shapes)
        for f in sorted(tmp_path.glob(f"{tag}_export_r*.pt")):
            d = torch.load(f)
            received = [(n, t) for b in d["buckets"] for n, t in b]
            assert [n for n, _ in received] == [n for n, _, _ in d["planned"]], "stream order differs from the plan"
            exported = dict(received)
            assert set(exported) == set(reference), f"{f.name}: {set(exported) ^ set(reference)}"
            for name, t in reference.items():
                assert exported[name].dtype == t.dtype and torch.equal(exported[name], t), f"{f.name}: {name}"
            check_buckets(d["buckets"], d["planned"])
        if cfg["tie_word_embeddings"]:
            assert "lm_head.weight" not in reference
            if pp > 1:  # the last stage really held the tied copy, and the export skipped it
                last = [torch.load(f) for f in raw_files]
                assert any(n == "output_layer.weight" for d in last if d["pp"] == pp - 1 for n, _ in d["raw"])


def check_buckets(buckets, planned):
    sizes = [[t.numel() * t.element_size() for _, t in b] for b in buckets]
    assert all(sum(s) <= BUCKET_BYTES or len(s) == 1 for s in sizes), sizes
    assert any(len(s) == 1 and s[0] > BUCKET_BYTES for s in sizes), "no tensor larger than a bucket was exercised"
    assert [b for _, _, b in planned] == [i for i, b in enumerate(buckets) for _ in b]
    layer_buckets = defaultdict(set)
    for i, b in enumerate(buckets):
        for name, _ in b:
            if name.startswith("model.layers."):
                layer_buckets[name.split(".")[2]].add(i)
    assert any(len(v) > 1 for v in layer_buckets.values()), "no bucket boundary fell inside a layer"


def test_assign_buckets():
    assert assign_buckets([10, 10, 10, 10], 25) == [0, 0, 1, 1]
    assert assign_buckets([50, 10, 10], 25) == [0, 1, 1]  # oversized first tensor alone
    assert assign_buckets([10, 50, 10], 25) == [0, 1, 2]  # oversized in the middle alone
    assert assign_buckets([25, 25], 25) == [0, 1]
    assert assign_buckets([], 25) == []


def test_make_params_current_forces_the_overlapped_param_gather_only():
    from types import SimpleNamespace

    from harmony_mcore.bridge.export import make_params_current

    calls = []

    def chunk(dist_opt, overlap):
        cfg = SimpleNamespace(use_distributed_optimizer=dist_opt, overlap_param_gather=overlap)
        return SimpleNamespace(ddp_config=cfg, start_param_sync=lambda **kw: calls.append((dist_opt, overlap, kw)))

    make_params_current([chunk(True, True), chunk(True, False), chunk(False, False), SimpleNamespace()])
    assert calls == [(True, True, {"force_sync": True})]
