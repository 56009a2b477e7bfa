"""`harmony eval` and `harmony data reframe` end to end: a tiny random Qwen3 and a character
tokenizer saved as a Hugging Face folder, the torch engine on CPU, real benchmark files."""

import json

import pytest

from harmony_mcore.cli import main
from harmony_mcore.data.benchmarks import load_benchmark
from harmony_mcore.data.prompts import view_messages
from tests.support.tiny import DEFAULT_ALPHABET, char_tokenizer, tiny_hf_config


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    problems = load_benchmark("aime24", limit=2) + load_benchmark("gsm8k", limit=2)
    texts = [m["content"] for p in problems for v in view_messages(p, "reframe", 2) for m in v]
    alphabet = DEFAULT_ALPHABET + "".join(sorted(set("".join(texts)) - set(DEFAULT_ALPHABET)))
    tok = char_tokenizer(alphabet)
    cfg = tiny_hf_config("qwen3", vocab_size=len(tok), max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_harmony_eval_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "aime24,gsm8k", "--n", "3", "--limit", "2",
               "--max-tokens", "6", "--engine", "torch", "--match-workers", "1", "--out", str(out)])
    assert rc == 0
    assert "| aime24 | 2 |" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for bench in ("aime24", "gsm8k"):
        entry = results["benchmarks"][bench]
        assert entry["problems"] == 2 and entry["samples"] == 3 and entry["overlong"] == []
        for scorer in ("strict", "math"):
            metrics = entry["scores"][scorer]
            assert set(metrics) == {"avg@3", "pass@1", "pass@2", "pass@3", "maj@1", "maj@2", "maj@3"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["responses"]) == 3 for r in rows)
    assert (out / "results.png").stat().st_size > 1000 and (out / "results.md").is_file()


def test_harmony_eval_rejects_bad_input(tiny_model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "neither a Hugging Face model folder" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmarks", "gpqa-diamond",
                 "--out", str(tmp_path / "o")]) == 2
    assert "SOURCES.md" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--benchmarks", " , ", "--out", str(tmp_path / "o")]) == 2
    assert "name at least one" in capsys.readouterr().err
    for flag, value in (("--temperature", "-1"), ("--top-p", "2"), ("--match-workers", "0"),
                        ("--match-timeout", "0"), ("--limit", "-1")):
        with pytest.raises(SystemExit):
            main(["eval", "--model", str(tiny_model_dir), flag, value, "--out", str(tmp_path / "o")])
        assert f"argument {flag}: must be" in capsys.readouterr().err
    bare = tmp_path / "no_tokenizer"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert main(["eval", "--model", str(bare), "--benchmarks", "aime24", "--out", str(tmp_path / "o")]) == 2
    assert "no tokenizer files" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_harmony_data_reframe_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "reframes.jsonl"
    rc = main(["data", "reframe", "--model", str(tiny_model_dir), "--benchmark", "aime24", "--limit", "2",
               "--max-tokens", "5", "--retries", "0", "--engine", "torch", "--strategy", "cycle", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["requested_strategy"] for r in rows] == ["Concretize", "Generalize"]
    assert [r["answer"] for r in rows] == ["204", "25"]
    # A random model writes no markers: every row is reported, none silently dropped.
    assert "2 rows have no REWRITTEN PROBLEM" in capsys.readouterr().err
