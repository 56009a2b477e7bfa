"""HF -> Megatron -> HF conversion: bit-exact round trips and a clear error for every bad input."""

import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harmony_mcore.bridge import hf_to_mcore, mcore_to_hf
from conversion.cli import main as convert_main
from harmony_mcore.bridge.files import ConversionError
from harmony_mcore.bridge.dist_ckpt import CheckpointError
from harmony_mcore.bridge.mapping import MappingError
from harmony_mcore.config import ConfigError
from harmony_mcore.bridge.safetensors_io import SafetensorsError
from tests.conversion_models import hf_model, save_char_tokenizer, save_hf_model

REPO = Path(__file__).resolve().parents[1]


def _hf_tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _quiet(*_a, **_k):
    pass


@pytest.mark.parametrize("name,tp,shard", [("qwen2", 2, None), ("qwen3", 4, "40KB"), ("llama", 1, None),
                                           ("qwen3_mqa", 1, None)])
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, monkeypatch, name, tp, shard):
    from transformers import AutoModelForCausalLM

    if shard:  # also store small chunks (row blocks below the TP blocks)
        monkeypatch.setattr(hf_to_mcore, "MAX_CHUNK_BYTES", 4096)
    kw = {"max_shard_size": shard} if shard else {}
    src = save_hf_model(name, tmp_path / "hf", torch.bfloat16, **kw)
    hf_to_mcore.convert(src, tmp_path / "mc", tp=tp, log=_quiet)
    assert (tmp_path / "mc/hf/config.json").read_bytes() == (src / "config.json").read_bytes()
    mcore_to_hf.convert(tmp_path / "mc", tmp_path / "back", max_shard_size="30KB", log=_quiet)

    a, b = _hf_tensors(src), _hf_tensors(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    index = json.loads((tmp_path / "back/model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(b) and len(set(index["weight_map"].values())) > 1
    assert (tmp_path / "back/config.json").read_bytes() == (src / "config.json").read_bytes()

    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    orig = AutoModelForCausalLM.from_pretrained(src).eval()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert torch.equal(orig(ids).logits, back(ids).logits)


def test_cast_and_overwrite_via_cli(tmp_path, capsys):
    src = save_hf_model("qwen3_mqa", tmp_path / "hf", torch.float32)
    mc, out = tmp_path / "mc", tmp_path / "out"
    assert convert_main(["hf-to-mcore", "--hf", str(src), "--out", str(mc), "--dtype", "bf16"]) == 0
    assert convert_main(["mcore-to-hf", "--ckpt", str(mc), "--out", str(out)]) == 0
    assert convert_main(["mcore-to-hf", "--ckpt", str(mc), "--out", str(out)]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert convert_main(["mcore-to-hf", "--ckpt", str(mc), "--out", str(out), "--overwrite", "--dtype", "fp32"]) == 0
    a, b = _hf_tensors(src), _hf_tensors(out)
    assert all(b[k].dtype == torch.float32 and torch.equal(a[k].bfloat16().float(), b[k]) for k in a)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


# ---- bad inputs -------------------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    return save_hf_model("qwen3_mqa", tmp_path / "hf", torch.float32)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _rewrite_weights(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_unknown_architecture(tiny, tmp_path):
    _edit_config(tiny, architectures=["MixtralForCausalLM"])
    with pytest.raises(ConfigError, match="unsupported architecture MixtralForCausalLM: supported are .*LlamaForCausalLM"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_missing_tensor(tiny, tmp_path):
    _rewrite_weights(tiny, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(ConversionError, match=r"missing tensors .*model\.layers\.1\.self_attn\.k_norm\.weight"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_extra_tensor(tiny, tmp_path):
    _rewrite_weights(tiny, lambda t: t.update({"model.layers.0.mlp.router.weight": torch.zeros(2, 48)}))
    with pytest.raises(ConversionError, match=r"not used by Qwen3ForCausalLM: \['model\.layers\.0\.mlp\.router"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_wrong_shape(tiny, tmp_path):
    _edit_config(tiny, intermediate_size=60)
    with pytest.raises(ConversionError, match=r"gate_proj\.weight has shape \(64, 48\), config\.json implies \(60, 48\)"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_truncated_safetensors(tiny, tmp_path):
    f = tiny / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(SafetensorsError, match="truncated safetensors file"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_corrupt_safetensors_header(tiny, tmp_path):
    f = tiny / "model.safetensors"
    raw = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8:8 + 20] = b"\x00garbage-not-json!!!"
    f.write_bytes(bytes(raw))
    with pytest.raises(SafetensorsError, match="corrupt safetensors file"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", log=_quiet)


def test_existing_output_and_failed_run_leave_nothing(tiny, tmp_path, monkeypatch):
    out = tmp_path / "mc"
    out.mkdir()
    with pytest.raises(ConversionError, match="already exists: pass --overwrite"):
        hf_to_mcore.convert(tiny, out, log=_quiet)
    calls = []

    def failing_get(self, name, rows=None, _orig=hf_to_mcore.SafetensorsReader.get):
        calls.append(name)
        if len(calls) > 5:
            raise OSError("disk went away")
        return _orig(self, name, rows)

    monkeypatch.setattr(hf_to_mcore.SafetensorsReader, "get", failing_get)
    out.rmdir()
    with pytest.raises(OSError, match="disk went away"):
        hf_to_mcore.convert(tiny, out, log=_quiet)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["hf"]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_inputs_or_foreign_folders(tiny, tmp_path, capsys):
    """--overwrite replaces only a folder harmony convert wrote, never one that is, holds or sits
    inside an input (each of these deleted user data before)."""
    mc = tmp_path / "mc"
    assert convert_main(["hf-to-mcore", "--hf", str(tiny), "--out", str(mc)]) == 0
    run = tmp_path / "run"  # a run directory: checkpoints + metrics
    (run / "checkpoints/step_0000002").mkdir(parents=True)
    shutil.copytree(mc, run / "checkpoints/step_0000002/model")
    (run / "metrics.jsonl").write_text("{}\n")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    before = {p: _tree(p) for p in (tiny, mc, run, foreign)}
    cases = [["hf-to-mcore", "--hf", str(tiny), "--out", str(tmp_path)],  # the input's parent
             ["hf-to-mcore", "--hf", str(tiny), "--out", str(tiny)],  # the input itself
             ["hf-to-mcore", "--hf", str(tiny), "--out", str(foreign)],  # not ours
             ["mcore-to-hf", "--ckpt", str(mc), "--out", str(mc / "hf")],  # inside the input
             ["mcore-to-hf", "--ckpt", str(run), "--out", str(run)],  # the run folder
             ["mcore-to-hf", "--ckpt", str(mc), "--out", str(tiny / "config.json" / "x")]]  # under a file
    for argv in cases:
        assert convert_main(argv + ["--overwrite"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert {p: _tree(p) for p in before} == before
    # what it wrote itself it may replace; a symlink to the input is resolved and refused
    assert convert_main(["hf-to-mcore", "--hf", str(tiny), "--out", str(mc), "--overwrite"]) == 0
    (tmp_path / "link").symlink_to(tiny)
    assert convert_main(["hf-to-mcore", "--hf", str(tiny), "--out", str(tmp_path / "link"), "--overwrite"]) == 2
    assert _tree(tiny) == before[tiny]


def test_sigterm_during_conversion_leaves_no_temporary_folder(tiny, tmp_path):
    script = (f"import os, signal\nfrom harmony_mcore.bridge import hf_to_mcore\n"
              f"orig = hf_to_mcore.SafetensorsReader.get\n"
              f"def get(self, *a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return orig(self, *a, **k)\n"
              f"hf_to_mcore.SafetensorsReader.get = get\n"
              f"hf_to_mcore.convert({str(tiny)!r}, {str(tmp_path / 'mc')!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_tp_and_pp_must_divide(tiny, tmp_path):
    with pytest.raises(MappingError, match="tensor parallel size 2 does not divide num_key_value_heads=1"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", tp=2, log=_quiet)
    with pytest.raises(ConversionError, match="--pp 3 does not divide num_hidden_layers=2"):
        hf_to_mcore.convert(tiny, tmp_path / "mc", pp=3, log=_quiet)


def test_bad_megatron_checkpoints(tiny, tmp_path):
    mc = tmp_path / "mc"
    hf_to_mcore.convert(tiny, mc, log=_quiet)
    with pytest.raises(ConversionError, match="not a Megatron-Core distributed checkpoint"):
        mcore_to_hf.convert(tiny, tmp_path / "x", log=_quiet)
    # a config of another family: the checkpoint lacks its tensors
    other = save_hf_model("qwen2", tmp_path / "other", torch.float32)
    with pytest.raises(ConversionError, match="missing tensors for Qwen2ForCausalLM"):
        mcore_to_hf.convert(mc, tmp_path / "x", hf_config=other, log=_quiet)
    # a config with a different width: shapes disagree
    wide = tmp_path / "wide"
    wide.mkdir()
    cfg = json.loads((mc / "hf/config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 80}))
    with pytest.raises(ConversionError, match=r"linear_fc1\.weight has shape \(2, 128, 48\), config\.json implies"):
        mcore_to_hf.convert(mc, tmp_path / "x", hf_config=wide, log=_quiet)
    # a truncated data file
    data = next(mc.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mcore_to_hf.convert(mc, tmp_path / "x", log=_quiet)
    assert not (tmp_path / "x").exists()


def test_cli_reports_errors_without_traceback(tiny, tmp_path, capsys):
    _edit_config(tiny, architectures=["GPT2LMHeadModel"])
    assert convert_main(["hf-to-mcore", "--hf", str(tiny), "--out", str(tmp_path / "mc")]) == 2
    err = capsys.readouterr().err
    assert "error: unsupported architecture GPT2LMHeadModel" in err and "Traceback" not in err


def test_tied_checkpoint_with_lm_head_copy_is_accepted(tmp_path):
    src = save_hf_model("llama", tmp_path / "hf", torch.float32)
    _rewrite_weights(src, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    hf_to_mcore.convert(src, tmp_path / "mc", log=_quiet)
    mcore_to_hf.convert(tmp_path / "mc", tmp_path / "back", log=_quiet)
    assert "lm_head.weight" not in _hf_tensors(tmp_path / "back")
    model = hf_model("llama")
    assert torch.equal(_hf_tensors(tmp_path / "back")["model.embed_tokens.weight"],
                       model.state_dict()["model.embed_tokens.weight"])


# ---- logits of converted checkpoints inside Megatron (gloo processes) ---------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    pairs = []
    for name, layout_tp in (("qwen2", 2), ("qwen3", 1), ("llama", 2)):
        src = save_hf_model(name, root / f"{name}_hf", torch.float32)
        if name == "qwen2":
            save_char_tokenizer(src, 250)  # verify tokenizes its prompts with it
        limit = hf_to_mcore.MAX_CHUNK_BYTES
        if name == "llama":  # many small chunks: embedding and fc1 row-blocks, QKV group blocks
            hf_to_mcore.MAX_CHUNK_BYTES = 2048
        try:
            hf_to_mcore.convert(src, root / f"{name}_mc", tp=layout_tp, log=_quiet)
        finally:
            hf_to_mcore.MAX_CHUNK_BYTES = limit
        pairs.append(f"{src}={root / f'{name}_mc'}")
    other = root / "qwen2_other"
    hf_model("qwen2", torch.float32, seed=1).save_pretrained(other)
    return pairs, other


@pytest.mark.dist
def test_logits_single_process_and_verify_command(converted, run_torchrun):
    pairs, other = converted
    script = Path(__file__).parent / "dist" / "conversion_logits.py"
    out = run_torchrun(script, 1, "1", "1", *pairs, env={"OTHER_HF": str(other)}).stdout
    assert out.count("max|diff|") == 3 and "verify OK" in out


@pytest.mark.dist
def test_logits_tp2_pp2_and_export_of_a_megatron_saved_checkpoint(converted, run_torchrun, tmp_path):
    pairs, _ = converted
    script = Path(__file__).parent / "dist" / "conversion_logits.py"
    out = run_torchrun(script, 4, "2", "2", *pairs, env={"SAVE_ROOT": str(tmp_path / "saved")}).stdout
    assert out.count("max|diff|") == 6  # two last-stage TP ranks x three models
    # checkpoints saved by megatron itself at TP2 x PP2 (padded vocab, per-rank chunks) export bit-exactly
    for pair in pairs:
        src = Path(pair.split("=")[0])
        back = tmp_path / f"{src.name}_back"
        mcore_to_hf.convert(tmp_path / "saved" / src.name, back, hf_config=src, log=_quiet)
        a, b = _hf_tensors(src), _hf_tensors(back)
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---- release quantization ----------------------------------------------------------------------

def test_quantize_without_modelopt_says_so(tiny, tmp_path, capsys, monkeypatch):
    for name in ("modelopt", "modelopt.torch", "modelopt.torch.quantization", "modelopt.torch.export"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    assert convert_main(["quantize", "--hf", str(tiny), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "nvidia-modelopt is not installed: pip install -e '.[gpu]'" in err and not (tmp_path / "q").exists()


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None,
                    reason="nvidia-modelopt is not installed (pip install -e '.[cpu]')")
def test_quantize_fp8_runs_and_dequantizes_close_to_the_original(tmp_path):
    """`harmony convert quantize` on CPU: FP8 weights are written with their scales, and weight * scale
    gives logits near the original."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src = save_hf_model("llama", tmp_path / "hf", torch.float32)  # vocab 300
    save_char_tokenizer(src, 300)
    assert convert_main(["quantize", "--hf", str(src), "--out", str(tmp_path / "q")]) == 0
    AutoConfig.from_pretrained(tmp_path / "q")  # the export's config loads
    assert json.loads((tmp_path / "q/hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    q, orig = _hf_tensors(tmp_path / "q"), _hf_tensors(src)
    fp8 = [k for k, t in q.items() if t.dtype == torch.float8_e4m3fn]
    assert fp8 and all(k.endswith(".weight") and "embed" not in k for k in fp8), fp8
    deq = {k: (t.float() * q[k + "_scale"].float() if k in fp8 else t.float())
           for k, t in q.items() if k in orig}
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        model.load_state_dict(deq, strict=False)
        got = model(ids).logits
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < 0.1, rel  # FP8 (E4M3) weights: changed, but close


def test_finds_checkpoint_and_hf_files_in_a_run_directory(tiny, tmp_path):
    # the trainer's layout: RUN/checkpoints/step_*/model, and the run's HF config in RUN/checkpoints/hf
    run = tmp_path / "run"
    for step in (10, 20):
        hf_to_mcore.convert(tiny, run / f"checkpoints/step_{step:07d}/model", log=_quiet)
        shutil.rmtree(run / f"checkpoints/step_{step:07d}/model/hf")  # the trainer keeps none there
    (run / "checkpoints/step_0000020/optimizer").mkdir()
    assert mcore_to_hf.find_checkpoint(run) == run / "checkpoints/step_0000020/model"
    assert mcore_to_hf.find_checkpoint(run / "checkpoints/step_0000010") == run / "checkpoints/step_0000010/model"
    # a neighbouring model's hf/ is never used: without the run's own config the export is refused
    hf_to_mcore.convert(tiny, run / "other_model", log=_quiet)
    with pytest.raises(ConversionError, match="pass --hf-config"):
        mcore_to_hf.convert(run, tmp_path / "out", log=_quiet)
    shutil.copytree(tiny, run / "checkpoints/hf", ignore=shutil.ignore_patterns("*.safetensors"))
    info = mcore_to_hf.convert(run, tmp_path / "out", log=_quiet)
    assert info["hf_config"] == str(run / "checkpoints/hf")
    assert (tmp_path / "out/config.json").read_bytes() == (tiny / "config.json").read_bytes()


def _raw_safetensors(path: Path, header, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _overlapping(d: Path) -> None:
    (d / "model.safetensors").unlink()
    f32 = {"dtype": "F32", "shape": [2]}
    _raw_safetensors(d / "model.safetensors", {"a": {**f32, "data_offsets": [0, 8]},
                                               "b": {**f32, "data_offsets": [4, 12]}}, bytes(12))


def _index(d: Path, weight_map) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("damage, msg", [
    (lambda d: _raw_safetensors(d / "model.safetensors", [1, 2]), "not an object"),
    (lambda d: _raw_safetensors(d / "model.safetensors", {"a": [1]}), "corrupt safetensors header entry"),
    (_overlapping, "overlap"),
    (lambda d: _index(d, ["model.safetensors"]), "weight_map must map"),
    (lambda d: _index(d, {"lm_head.weight": "../outside.safetensors"}), "outside the model folder"),
    (lambda d: _rewrite_weights(d, lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()})),
     "only float32, float16 and bfloat16"),
    (lambda d: _edit_config(d, hidden_size=None), "hidden_size=None; it must be a positive integer"),
    (lambda d: _edit_config(d, num_attention_heads=0), "num_attention_heads=0"),
    (lambda d: (d / "config.json").write_text("[]"), "config.json: not a JSON object"),
])
def test_hostile_hf_inputs_are_one_line_errors(tiny, tmp_path, capsys, damage, msg):
    (tmp_path / "outside.safetensors").write_bytes(b"never read")
    damage(tiny)
    assert convert_main(["hf-to-mcore", "--hf", str(tiny), "--out", str(tmp_path / "mc")]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "mc").exists()
