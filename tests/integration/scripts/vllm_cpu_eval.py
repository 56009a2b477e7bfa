"""The release path on CPU with the real vLLM (run by tests/integration/test_rollout_vllm_cpu.py):
HF model -> `harmony convert hf-to-mcore` -> `harmony convert mcore-to-hf` -> `harmony eval --engine vllm`;
the vLLM engine that eval built scores sequences like transformers on the exported weights (fp32, 1e-4).

python tests/integration/scripts/vllm_cpu_eval.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

from harmony_mcore import evaluation
from harmony_mcore.cli import main as harmony
from harmony_mcore.rollout.torch_engine import TorchEngine
from harmony_mcore.data.benchmarks import load_benchmark
from harmony_mcore.data.prompts import view_messages
from tests.support.tiny import DEFAULT_ALPHABET, char_tokenizer, tiny_hf_config


def run(out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    texts = [m["content"] for p in load_benchmark("gsm8k", limit=2) for v in view_messages(p, "reframe", 2) for m in v]
    tok = char_tokenizer(DEFAULT_ALPHABET + "".join(sorted(set("".join(texts)) - set(DEFAULT_ALPHABET))))
    cfg = tiny_hf_config("qwen3", vocab_size=len(tok), hidden_size=128, head_dim=32, tie_word_embeddings=True,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)).save_pretrained(out / "hf")
    tok.save_pretrained(out / "hf")
    assert harmony(["convert", "hf-to-mcore", "--hf", str(out / "hf"), "--out", str(out / "mcore")]) == 0
    assert harmony(["convert", "mcore-to-hf", "--ckpt", str(out / "mcore"), "--out", str(out / "release")]) == 0

    built = []
    load = evaluation.load_engine
    evaluation.load_engine = lambda *a, **k: built.append(load(*a, **k)) or built[-1]
    rc = harmony(["eval", "--model", str(out / "release"), "--engine", "vllm", "--benchmarks", "gsm8k", "--limit", "2",
                  "--n", "2", "--max-tokens", "8", "--match-workers", "1", "--out", str(out / "eval")])
    assert rc == 0 and (out / "eval" / "results.json").is_file()
    vllm = built[0][0]
    ref = TorchEngine.from_pretrained(str(out / "release"))
    seqs = [tok.encode(t, add_special_tokens=False) for t in ("Natalia sold 48 clips", "x = 3 + 4 * 2", "abc")]
    diff = max(float((a - b).abs().max()) for a, b in zip(vllm.score(seqs), ref.score(seqs)))
    assert diff <= 1e-4, f"vLLM on the exported checkpoint scores {diff} away from transformers"
    print(f"exported checkpoint: vLLM vs transformers log-prob max diff {diff:.2e}")
    print("VLLM CPU EVAL OK", flush=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
