"""`harmony train` end to end on CPU: 2 gloo processes (TP=2), the torch engine, every phase.

One uninterrupted run is the reference; a second run of the same command is SIGKILLed after its
first checkpoint, restarted (resumes), stopped with SIGTERM (checkpoints, exits cleanly) and
restarted again: its steps after the kill sample and reward exactly what the uninterrupted run did.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
ARGS = ["cpu", "toy.pretrain_steps=30", "toy.num_problems=8", "data.problems_per_step=4", "rollout.n=4",
        "rollout.max_response_tokens=40", "eval.n=2", "eval.every=0", "parallel.micro_batch_size=16",
        f"steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=2", "algorithm.kl_coef=0.005",
        "log.wandb=disabled"]
PHASES = ("sync", "generate", "logprobs", "reward", "update")


def _env(cache: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HARMONY_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def _start(out: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harmony_mcore.cli", "train", *ARGS, f"output_dir={out}"],
                            env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-6000:]
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: int = 400) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-6000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.5)


def _steps(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "rewards_digest" in r}


@pytest.mark.dist
def test_train_end_to_end_kill_and_resume(tmp_path):
    cache = tmp_path / "cache"
    ref_out, out = tmp_path / "ref", tmp_path / "run"

    log = _finish(_start(ref_out, cache))
    assert "accuracy before" in log
    ref = _steps(ref_out)
    assert sorted(ref) == list(range(1, STEPS + 1))
    for m in ref.values():
        for phase in PHASES:
            assert m[f"time/{phase}_s"] > 0
        assert {"reward/label_accuracy", "reward/coverage", "reward/view_agreement", "reward/accuracy/view0",
                "reward/reward/view1", "length/view1", "view0/kl", "grad_norm", "lr",
                "throughput/generate_tokens_per_s"} <= set(m)
        assert m["skipped"] == 0 and m["rollout/logprob_diff_max"] < 1e-3  # engine holds the trainer's weights
    history = [json.loads(line) for line in (ref_out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in history if "eval/toy-arith/math/avg@2" in r]
    assert evals == [0, STEPS]
    assert (ref_out / "report.png").stat().st_size > 0
    summary = json.loads((ref_out / "summary.json").read_text())
    assert summary["steps"] == STEPS and "accuracy_last_step" in summary
    ckpts = sorted(p.name for p in (ref_out / "checkpoints").glob("step_*"))
    assert ckpts == ["step_0000002", "step_0000004"]  # keep_last=2
    assert (ref_out / "checkpoints" / "step_0000004" / "model" / "metadata.json").is_file()

    # SIGKILL the whole run right after its first checkpoint: launcher, torchrun and the ranks
    # (torchrun starts them in sessions of their own, so kill the tree, as Slurm's cgroup would).
    proc = _start(out, cache)
    _wait_for(out / "checkpoints" / "step_0000002" / "state.json", proc)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.kill()
    psutil.wait_procs(tree, timeout=30)
    proc.wait()
    killed_at = time.time()
    # Same command: resumes from step 2. SIGTERM after step 3: checkpoint, clean exit.
    proc = _start(out, cache)
    deadline = time.time() + 400
    jsonl = out / "metrics.jsonl"  # rewritten from the checkpoint when the run resumes
    while not (jsonl.stat().st_mtime > killed_at and max(_steps(out), default=0) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-6000:]
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    log = _finish(proc)
    assert "resumed at step 2" in log
    done = max(_steps(out))
    assert (out / "checkpoints" / f"step_{done:07d}" / "state.json").is_file()
    if done < STEPS:
        assert f"stopped at step {done}" in log
        _finish(_start(out, cache))

    got = _steps(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # the killed run's partial step 3 was dropped
    for step in range(1, STEPS + 1):
        for key in ("rollouts_digest", "rewards_digest", "reward/label_accuracy", "reward/coverage"):
            assert got[step][key] == ref[step][key], (step, key)


@pytest.mark.dist
def test_train_on_a_benchmark_file_with_an_hf_model(tmp_path):
    """The cluster path on CPU: an HF model directory (converted once), chat-template prompts with
    the reframe-and-solve system prompt, a problems file, evaluation through harmony_mcore.evaluation."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.support.tiny import char_tokenizer, tiny_hf_config

    tok = char_tokenizer()
    tok._tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # keep "\n\n" apart
    hf = tiny_hf_config("qwen3", vocab_size=len(tok) + (-len(tok)) % 8)
    kw = {k: v for k, v in hf.items() if k not in ("model_type", "torch_dtype")}
    model_dir = tmp_path / "model"
    AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3", **kw)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i}+{i}?", "answer": str(2 * i)})
                                + "\n" for i in range(4)))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "harmony_mcore.cli", "train", "qwen3-4b-math500", "model=tiny-toy",
         f"model.path={model_dir}", "model.hf_config=null", "model.dtype=fp32", "data.benchmark=file",
         f"data.path={problems}", "data.problems_per_step=2", "parallel=cpu-tp2", "parallel.micro_batch_size=4",
         "rollout=torch", "rollout.n=2", "rollout.max_response_tokens=8", "rollout.max_prompt_tokens=2048",
         "eval.n=2", "eval.limit=2", "steps=1", "algorithm.consensus.match=normalized", "log.wandb=disabled",
         f"output_dir={out}"], env=_env(tmp_path / "cache"), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert "eval/file/math/avg@2" in rows[0] and "eval/file/strict/pass@2" in rows[1]
    step = rows[1]
    assert step["reward/problems"] == 2 and step["reward/responses"] == 2 * 2 * 2
    assert step["reward/format_score/view1"] < 1  # a random model does not write the reframe markers
    assert step["rollout/logprob_diff_max"] < 1e-3
    assert (out / "initial_mcore" / "hf" / "config.json").is_file()
