"""Faults around a training run: damaged checkpoints, two runs in one output_dir, Ctrl-C, and a
launcher killed with -9 (its torchrun and ranks must not outlive it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harmony_mcore.bridge import hf_to_mcore
from harmony_mcore import checkpoint_check
from harmony_mcore.config import ConfigError
from harmony_mcore.metrics import report_line, summarise
from harmony_mcore import run_guard
from harmony_mcore.run_guard import lock_output_dir
from tests.conversion_models import save_hf_model

REPO = Path(__file__).resolve().parents[1]


# ---- which checkpoint to resume from ---------------------------------------------------------

@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    hf_to_mcore.convert(save_hf_model("qwen3_mqa", root / "hf"), root / "mc", log=lambda *_: None)
    return root / "mc"


def _step(root: Path, step: int, model: Path, world: int = 2) -> Path:
    import torch

    d = root / f"step_{step:07d}"
    shutil.copytree(model, d / "model")
    (d / "optimizer").mkdir()
    for r in range(world):
        torch.save({"r": r}, d / f"optimizer_rank{r:05d}.pt")
        torch.save({"r": r}, d / f"rng_rank{r:05d}.pt")
    (d / "state.json").write_text(json.dumps({"step": step, "layout": {"world": world, "tp": world, "pp": 1}}))
    return d


@pytest.mark.parametrize("damage, what", [
    (lambda d: (d / "state.json").unlink(), "state.json"),
    (lambda d: (d / "state.json").write_text("{trunc"), "state.json"),
    (lambda d: (d / "rng_rank00001.pt").unlink(), "rng_rank*.pt is missing for ranks [1]"),
    (lambda d: (d / "optimizer_rank00000.pt").write_bytes((d / "optimizer_rank00000.pt").read_bytes()[:40]),
     "optimizer_rank00000.pt is truncated"),
    (lambda d: next((d / "model").glob("*.distcp")).write_bytes(b"x"), "is truncated"),
    (lambda d: next((d / "model").glob("*.distcp")).unlink(), "is missing"),
    (lambda d: (d / "model" / "common.pt").unlink(), "common.pt is missing"),
    (lambda d: (d / "model" / ".metadata").write_bytes(b"\x80\x04garbage"), "corrupt"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(model_ckpt, tmp_path, damage, what):
    good = _step(tmp_path, 2, model_ckpt)
    bad = _step(tmp_path, 4, model_ckpt)
    assert checkpoint_check.problems(bad) == []
    damage(bad)
    messages = []
    assert checkpoint_check.pick("auto", tmp_path, log=messages.append) == good
    assert len(messages) == 1 and str(bad) in messages[0] and what in messages[0], messages
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        checkpoint_check.pick(str(bad), tmp_path)
    shutil.rmtree(good)
    with pytest.raises(ConfigError, match="no complete checkpoint"):  # never silently start over
        checkpoint_check.pick("auto", tmp_path, log=messages.append)
    assert checkpoint_check.pick("never", tmp_path) is None


def test_lock_refuses_a_second_holder(tmp_path):
    fd = lock_output_dir(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            lock_output_dir(tmp_path / "run")
    finally:
        os.close(fd)
    os.close(lock_output_dir(tmp_path / "run"))  # released with its holder


def _hold_rank_lock(out: Path) -> subprocess.Popen:
    """A stand-in for a rank whose launcher is gone: it holds the rank lock until killed."""
    code = ("import sys, time; from harmony_mcore import run_guard; "
            "run_guard.lock_rank(sys.argv[1], 1); print('held', flush=True); time.sleep(600)")
    env = {k: v for k, v in os.environ.items() if k != run_guard.LOCK_ENV}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env={**env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_launcher_refuses_while_ranks_of_an_earlier_run_live(tmp_path):
    out = tmp_path / "run"
    rank = _hold_rank_lock(out)
    try:
        fd = lock_output_dir(out)  # the run lock itself is free: its launcher is gone
        try:
            with pytest.raises(ConfigError, match=f"ranks of an earlier run \\(pids {rank.pid}\\) are still running"):
                run_guard.refuse_if_ranks_alive(out)
        finally:
            os.close(fd)
    finally:
        rank.kill()
        rank.wait()
    fd = lock_output_dir(out)
    run_guard.refuse_if_ranks_alive(out)  # gone with its holder
    os.close(fd)


def test_a_rank_starts_only_while_its_launcher_holds_the_run_lock(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(run_guard.LOCK_ENV, str(os.getpid()))
    with pytest.raises(ConfigError, match="no longer holds the run lock \\(free\\): this rank does not start"):
        run_guard.lock_rank(out, 0)
    launcher = lock_output_dir(out)  # this process plays the launcher
    try:
        fds = run_guard.lock_rank(out, 0)
        assert len(fds) == 1  # its rank 0 does not take the run lock again
        with pytest.raises(ConfigError, match="ranks of an earlier run"):  # what a new launcher would see
            run_guard.refuse_if_ranks_alive(out)
        for fd in fds:
            os.close(fd)
        monkeypatch.setenv(run_guard.LOCK_ENV, "1")  # a rank of another launcher: the lock names ours
        with pytest.raises(ConfigError, match=f"held by pid {os.getpid()}"):
            run_guard.lock_rank(out, 1)
    finally:
        os.close(launcher)


def test_summary_after_a_stop_does_not_call_before_after():
    key = "eval/toy/math/avg@2"
    history = [{"step": 0, key: 0.25}, {"step": 1}, {"step": 2}]
    s = summarise(history)
    assert "accuracy_last_step" not in s and "no evaluation since (stopped at step 2)" in report_line(s)
    s = summarise(history + [{"step": 3, key: 0.5}])
    assert s["accuracy_last_step"] == 0.5 and "last step 0.500" in report_line(s)


# ---- the launcher: lock, Ctrl-C, kill -9 ------------------------------------------------------

ARGS = ["cpu", "toy.pretrain_steps=30", "toy.num_problems=8", "data.problems_per_step=4", "rollout.n=4",
        "rollout.max_response_tokens=24", "eval.n=2", "eval.every=0", "parallel.micro_batch_size=16",
        "steps=50", "checkpoint.every=0", "log.wandb=disabled", "log.plot=false"]


def _start(out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARMONY_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "harmony_mcore.cli", "train", *ARGS, f"output_dir={out}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    jsonl = out / "metrics.jsonl"
    while not (jsonl.exists() and any(json.loads(line).get("step", 0) >= step
                                      for line in jsonl.read_text().splitlines() if line.strip())):
        assert proc.poll() is None, proc.communicate()[0][-6000:]
        assert time.time() < deadline, "no training step"
        time.sleep(0.5)


@pytest.mark.slow  # several minutes on 2 busy cores (two runs, a graceful stop, an orphaned one)
@pytest.mark.dist
def test_lock_ctrl_c_and_kill_minus_nine_of_the_launcher(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = _start(out, cache)
    _wait_for_step(out, proc, 1)
    # a second run in the same output_dir is refused at once, without touching the first
    second = subprocess.run([sys.executable, "-m", "harmony_mcore.cli", "train", *ARGS, f"output_dir={out}"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"in use by another run (pid {proc.pid})" in second.stderr, second.stderr
    # Ctrl-C: the step finishes, a checkpoint is written, everything exits 0, no "after" accuracy
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in log, log[-6000:]
    stopped = int(log.split("stopped at step ")[1].split(":")[0])
    assert (out / "checkpoints" / f"step_{stopped:07d}" / "state.json").is_file()
    assert "no evaluation since" in log and "-> after" not in log
    # kill -9 of the launcher's process group (a terminal, a job manager without cgroups): torchrun dies
    # with it, the ranks finish their step, checkpoint and exit. While they live, a rerun refuses: they
    # are frozen here so that "while they live" lasts as long as the rerun needs to start.
    proc = _start(out, cache)
    _wait_for_step(out, proc, stopped + 1)
    tree = psutil.Process(proc.pid).children(recursive=True)
    ranks = [p for p in tree if "harmony_mcore.train_cli" in " ".join(p.cmdline())
             and "torch.distributed.run" not in " ".join(p.cmdline())]
    assert len(tree) >= 3 and len(ranks) == 2, [p.cmdline() for p in tree]  # torchrun + 2 ranks
    for p in ranks:
        p.suspend()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run([sys.executable, "-m", "harmony_mcore.cli", "train", *ARGS, f"output_dir={out}"],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    pids = " ".join(str(p.pid) for p in sorted(ranks, key=lambda p: p.pid))
    assert rerun.returncode == 2 and f"ranks of an earlier run (pids {pids}) are still running" in rerun.stderr, \
        rerun.stderr
    for p in ranks:
        p.resume()
    gone, alive = psutil.wait_procs(tree, timeout=150)
    for p in alive:
        p.kill()
    assert not alive, [p.cmdline() for p in alive]
    last = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))
    assert last > stopped  # the orphaned ranks checkpointed before exiting
