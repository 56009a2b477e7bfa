"""slurm/*.sbatch through a real `sbatch` on a throwaway local Slurm (tests/slurm_cluster.py): two
nodes, preemption, a time limit, a node failure, conversion and evaluation.

The jobs see what a user's shell exports (sbatch's default --export=ALL): `python` is this test's
interpreter (as an activated venv would put it on PATH), the code is this checkout (SLURM_SUBMIT_DIR,
which slurm/env.sh puts on PYTHONPATH), the toy model comes from one cache built once per module.
One uninterrupted single-node run is the reference every other run's rewards are compared with.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from slurm_cluster import Cluster, free_port, missing

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
ARGS = ["cpu", "toy.pretrain_steps=30", "toy.num_problems=8", "data.problems_per_step=4", "rollout.n=4",
        "rollout.max_response_tokens=40", "eval.n=2", "eval.every=0", "parallel.micro_batch_size=16",
        f"steps={STEPS}", "checkpoint.every=1", "checkpoint.keep_last=2", "log.wandb=disabled"]
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

pytestmark = [pytest.mark.slurm, pytest.mark.dist]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Job environment and the toy model, built once here so no job pretrains it."""
    from harmony_mcore.config import load_config
    from harmony_mcore.trainer import resolve_model

    root = tmp_path_factory.mktemp("jobs")
    (root / "bin").mkdir()
    # A script, not a symlink: a venv's interpreter reached through a link outside the venv does not
    # find its pyvenv.cfg and runs as the bare system Python, without our dependencies.
    (root / "bin" / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (root / "bin" / "python").chmod(0o755)
    subprocess.run([str(root / "bin" / "python"), "-c", "import hydra, megatron.core"], check=True)  # the jobs' python
    env = {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    model_dir, _ = resolve_model(load_config(ARGS[0], ARGS[1:]), log=lambda _: None)  # the shared cache
    return root, env, model_dir


def submit(cluster: Cluster, work, script: str, args: list[str], *opts: str) -> str:
    root, env, _ = work
    return cluster.sbatch([*opts, "--gpus-per-node=0", f"--output={root}/%x-%j.out", str(REPO / "slurm" / script),
                           *args], cwd=REPO, env={**env, "MASTER_PORT": str(free_port())})


def wait(cluster: Cluster, job: str, timeout: float, until=None) -> dict[str, str]:
    """Poll the job until it ends (or `until(info)`). A requeued job is released at once instead of
    after Slurm's requeue delay (a begin time ~2 minutes later)."""
    deadline = time.time() + timeout
    while True:
        info = cluster.job(job)
        if info["JobState"] in DONE or (until and until(info)):
            return info
        if info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime":
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        assert time.time() < deadline, f"job {job} still {info['JobState']} after {timeout}s:\n{job_log(info)[-6000:]}"
        time.sleep(1)


def job_log(info: dict[str, str]) -> str:
    path = Path(info["StdOut"])
    return path.read_text() if path.is_file() else f"(no {path})"


def steps(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "rewards_digest" in r}


def job_processes(job: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SLURM_JOB_ID") == job:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def train(cluster, work, out: Path, *opts: str, args=ARGS) -> str:
    return submit(cluster, work, "train.sbatch", [*args, f"output_dir={out}"], *opts)


def finished(cluster, job: str, timeout: float = 600) -> str:
    info = wait(cluster, job, timeout)
    text = job_log(info)
    assert info["JobState"] == "COMPLETED", f"{info['JobState']}:\n{text[-6000:]}"
    return text


@pytest.fixture(scope="module")
def reference(cluster, work):
    """One uninterrupted single-node run: TP=2 as 2 ranks on n1."""
    out = work[0] / "reference"
    text = finished(cluster, train(cluster, work, out, "--nodes=1"))
    assert "--nproc_per_node=2" in text  # the CPU layout, not 8 ranks per node
    got = steps(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


def same_rewards(got: dict[int, dict], ref: dict[int, dict]) -> None:
    for step in range(1, STEPS + 1):
        for key in ("rollouts_digest", "rewards_digest", "reward/label_accuracy"):
            assert got[step][key] == ref[step][key], (step, key)


def test_two_nodes_train_like_one(cluster, work, reference):
    out = work[0] / "two-nodes"
    text = finished(cluster, train(cluster, work, out, "--nodes=2"))
    assert "--nnodes=2 --nproc_per_node=1" in text  # one rank on each node, TP=2 across them
    got = steps(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    same_rewards(got, reference)


def test_preemption_checkpoints_requeues_and_resumes(cluster, work, reference):
    out = work[0] / "preempted"
    job = train(cluster, work, out, "--nodes=1")
    wait(cluster, job, 600, until=lambda info: (out / "checkpoints" / "step_0000001" / "state.json").is_file())
    cluster.run("scancel", "-s", "USR1", "-b", job)  # what Slurm sends before preempting (--signal=B:USR1)
    text = finished(cluster, job)
    assert "asking the ranks to checkpoint and stop" in text and "requeueing job" in text
    assert cluster.job(job)["Restarts"] == "1"
    stopped = int(text.split("stopped at step ")[1].split(":")[0])
    assert 1 <= stopped < STEPS and f"resumed at step {stopped}" in text
    same_rewards(steps(out), reference)
    deadline = time.time() + 30  # Slurm's own clean-up: no rank, torchrun or shell of the job outlives it
    while (left := job_processes(job)) and time.time() < deadline:
        time.sleep(1)
    assert not left, [p.cmdline() for p in left]
    assert not (REPO / f".harmony-stop-{job}").exists()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_convert_and_eval_jobs_write_what_the_commands_write(cluster, work, tmp_path):
    from harmony_mcore.cli import main as harmony

    model = work[2]
    eval_args = ["--model", str(model), "--benchmarks", "gsm8k", "--limit", "2", "--n", "2", "--max-tokens", "4",
                 "--engine", "torch", "--match-workers", "1"]
    jobs = [("convert.sbatch", ["hf-to-mcore", "--hf", str(model)], "mcore"),
            ("eval.sbatch", eval_args, "eval")]
    for script, args, name in jobs:
        assert harmony([script.split(".")[0], *args, "--out", str(tmp_path / "direct" / name)]) == 0
    submitted = [submit(cluster, work, script, [*args, "--out", str(tmp_path / "sbatch" / name)])
                 for script, args, name in jobs]
    for job in submitted:
        finished(cluster, job)
    # the job's checkpoint back to HF, as a user would after a conversion job
    back = submit(cluster, work, "convert.sbatch", ["mcore-to-hf", "--ckpt", str(tmp_path / "sbatch" / "mcore"),
                                                    "--out", str(tmp_path / "sbatch" / "hf")])
    assert harmony(["convert", "mcore-to-hf", "--ckpt", str(tmp_path / "direct" / "mcore"),
                    "--out", str(tmp_path / "direct" / "hf")]) == 0
    finished(cluster, back)
    for name in ("mcore", "eval", "hf"):
        direct, job = files(tmp_path / "direct" / name), files(tmp_path / "sbatch" / name)
        assert direct and sorted(job) == sorted(direct), name
        for path in direct:
            # torch_dist's own files vary between two saves of the same tensors (the index records the
            # save's path and a random id; the writer's record order follows its threads): their content
            # is compared through the HF export of each checkpoint ("hf"), which must be byte-identical
            if path != ".metadata" and not path.endswith(".distcp"):
                expected = direct[path]
                if path.endswith("harmony_convert.json"):  # the conversion's record names its own folders
                    expected = expected.replace(b"/direct/", b"/sbatch/")
                assert job[path] == expected, f"{name}/{path} differs"


@pytest.mark.slow  # a real time limit: the signal comes 30-60 s into the job, so the run must last that long
def test_time_limit_signal_checkpoints_and_requeues(cluster, work):
    """--time=2 --signal=B:USR1@60: slurmctld signals the batch script once under 60 s (+ its 30 s check
    period) remain, i.e. 30-60 s in, well before the kill at 120 s; the job requeues and resumes."""
    out = work[0] / "time-limit"
    args = [*ARGS, "steps=60", "checkpoint.every=0"]  # > 60 s of steps even on a fast machine
    job = train(cluster, work, out, "--nodes=1", "--time=2", "--signal=B:USR1@60", args=args)

    def requeued(info):
        if info["JobState"] == "PENDING" and info["Restarts"] == "1":
            cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=15")  # let the resumed run finish
            return True
        return False

    first = wait(cluster, job, 400, until=requeued)
    assert first["JobState"] == "PENDING", job_log(first)[-6000:]
    text = finished(cluster, job)
    assert "asking the ranks to checkpoint and stop" in text and "requeueing job" in text
    assert "TIME LIMIT" not in text  # stopped and requeued before Slurm's kill
    stopped = int(text.split("stopped at step ")[1].split(":")[0])
    assert f"resumed at step {stopped}" in text and sorted(steps(out)) == list(range(1, 61))


@pytest.mark.slow  # two partial runs on two nodes
def test_node_failure_fails_the_job_and_a_resubmission_resumes(cluster, work, reference):
    out = work[0] / "node-failure"
    job = train(cluster, work, out, "--nodes=2")
    wait(cluster, job, 600, until=lambda info: (out / "checkpoints" / "step_0000001" / "state.json").is_file())
    on_n2 = [p for p in job_processes(job) if p.environ().get("SLURMD_NODENAME") == "n2"]
    assert any("torch.distributed.run" in " ".join(p.cmdline()) for p in on_n2), [p.cmdline() for p in on_n2]
    for p in on_n2:  # the node's torchrun and its rank die at once, as when the node goes away
        p.kill()
    killed = time.time()
    info = wait(cluster, job, 120)  # --kill-on-bad-exit ends the step, the rank on n1 does not hang
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", job_log(info)[-6000:]
    print(f"job failed {time.time() - killed:.0f} s after the kill")
    done = max(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if (p / "state.json").is_file())

    text = finished(cluster, train(cluster, work, out, "--nodes=2"))  # the same command again
    assert f"resumed at step {done}" in text
    same_rewards(steps(out), reference)
    assert not job_processes(job)
