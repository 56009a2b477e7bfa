"""The real vLLM on CPU (`vllm-cpu`, the `cpu` extra): colocated beside the Megatron policy under
torchrun, `harmony train rollout=vllm` end to end, and `harmony eval` on an exported checkpoint.

Skipped, with the reason, where vLLM is not installed; CI installs it (.ci/run)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "integration" / "scripts" / "vllm_cpu_dist.py"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed: pip install -e '.[cpu,dev]' runs these tests"),
    pytest.mark.dist,
]


def test_vllm_tp2_beside_a_tp2_policy_sync_sample_and_check(tmp_path, run_torchrun):
    proc = run_torchrun(SCRIPT, 2, str(tmp_path), timeout=600)
    assert proc.stdout.count("VLLM CPU DIST OK") == 2, proc.stdout[-3000:]
    for caught in ("dummy weights before the first sync: caught", "a stale engine after a training step: caught",
                   "a garbled sync: caught"):
        assert caught in proc.stdout


TRAIN_ARGS = ["cpu", "rollout=vllm", "toy.pretrain_steps=30", "toy.num_problems=8", "data.problems_per_step=4",
              "rollout.n=4", "eval.n=2", "eval.every=0", "parallel.micro_batch_size=16", "steps=2",
              "checkpoint.every=0", "rollout.logprob_check_every=1", "rollout.logprob_check_tolerance=1e-3",
              "log.wandb=disabled"]


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toy_cache")  # the pretrained toy model is shared by both runs


@pytest.mark.parametrize("rollout_tp", [1, 2])
def test_harmony_train_rollout_vllm_end_to_end(tmp_path, toy_cache, rollout_tp):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARMONY_CACHE": str(toy_cache), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "harmony_mcore.cli", "train", *TRAIN_ARGS, f"rollout.tp={rollout_tp}",
                           f"output_dir={out}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "no sleep mode here" in proc.stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["rollout"]["engine"] == "vllm" and cfg["rollout"]["tp"] == rollout_tp
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "rollouts_digest" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        # the engine's sampled log-probs are the policy's (fp32): the weights are synced every step
        assert m["rollout/logprob_diff_max"] <= 1e-3 and m["sync/logprob_check_diff"] <= 1e-3, m


def test_harmony_eval_through_vllm_on_an_exported_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "integration" / "scripts" / "vllm_cpu_eval.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "VLLM CPU EVAL OK" in proc.stdout, (proc.stdout + proc.stderr)[-6000:]
