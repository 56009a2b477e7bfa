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

REPO = Path(__file__).resolve().parents[1]
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
    assert summary["steps"] == STEPS and "accuracy_after" in summary
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
