"""Checkpoints with Megatron's optimizer state under gloo (tests/integration/policy/check_checkpoint.py, 2 processes each).

Three launches of the same command: an uninterrupted run (then, in the same processes: a failing save is atomic,
a dtype/optimizer change is refused, TP2 -> TP1xDP2 and PP2(VPP2) -> PP1xDP2 resumes continue within float
tolerance), a run SIGKILLed (whole process tree) in the middle of step 3 after its step-2 checkpoint, and the same
command again,
which resumes (bf16, distributed optimizer over DP=2). The resumed run's optimizer state (fp32 main params, Adam
moments, step counts) equals the uninterrupted run's after step 2, its steps 3-4 (loss, grad norm, weights,
optimizer state) are bit-identical, every rank's RNG draws after resume equal the uninterrupted ones, and saving
the loaded checkpoint again gives byte-identical files (DCP's .metadata: identical but for the directory name and
the random save id it records).
"""

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "policy" / "check_checkpoint.py"


def _log(run: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"log_rank{rank}.jsonl").read_text().splitlines()]


def _files(d: Path) -> list[Path]:
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file())


@pytest.mark.dist
@pytest.mark.timeout(1800)  # three launches; slow only on a loaded machine
def test_checkpoint_resume_bit_identical_atomic_and_resharded(run_torchrun, tmp_path):
    ref, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    ref.mkdir()
    killed.mkdir()
    proc = run_torchrun(SCRIPT, 2, str(ref), "--extras", timeout=900)
    for check in ("OK atomic", "OK refuse", "OK reshard tp2-to-tp1dp2", "OK reshard pp2vpp2-to-pp1dp2"):
        assert check in proc.stdout, proc.stdout

    _kill_in_step_3(killed)
    assert [r["step"] for r in _log(killed, 0)] == [1, 2]  # died in step 3, after the step-2 checkpoint
    run_torchrun(SCRIPT, 2, str(killed), timeout=600)  # the same command: resumes

    for rank in (0, 1):
        want = {r["step"]: r for r in _log(ref, rank)}
        log = _log(killed, rank)
        resumed = log.index(next(r for r in log if "resumed_at" in r))
        assert log[resumed]["resumed_at"] == 2
        assert log[resumed]["optimizer"] == want[2]["optimizer"]  # main params, Adam moments, step counts
        after = log[resumed + 1:]
        assert [r["step"] for r in after] == [3, 4]
        for r in after:  # bit-identical: loss, grad norm, RNG draws, weight and optimizer digests
            assert r == want[r["step"]], (rank, r, want[r["step"]])
        assert want[3]["draws"] != want[1]["draws"]  # the draws move on: a fresh seed would not match

    first, again = killed / "ckpt" / "step_0000002", killed / "resave" / "step_0000002"
    names = [str(p) for p in _files(first)]
    assert names == [str(p) for p in _files(again)] and len(names) >= 9, names  # model, optimizer, RNG, state
    _, mismatch, errors = filecmp.cmpfiles(first, again, names, shallow=False)
    # torch.distributed.checkpoint's .metadata also records the directory written and a random save id.
    assert sorted(mismatch) == ["model/.metadata", "optimizer/.metadata"] and not errors, (mismatch, errors)
    for name in mismatch:
        a, b = (_dcp_metadata(d / name) for d in (first, again))
        assert a == b


def _kill_in_step_3(out: Path) -> None:
    """Run until every rank is inside step 3, then SIGKILL the whole tree: torchrun, the ranks and the
    checkpoint writer's helper processes (as Slurm's cgroup would; torchrun gives the ranks sessions of their own)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PAUSE_AT_STEP": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(SCRIPT), str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while not all((out / f"paused_rank{r}").exists() for r in (0, 1)):
        assert proc.poll() is None and time.time() < deadline, f"the run ended ({proc.poll()}) before step 3"
        time.sleep(0.5)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.kill()
    psutil.wait_procs(tree, timeout=30)
    proc.wait()


def _dcp_metadata(path: Path):
    import pickle

    meta = pickle.loads(path.read_bytes())  # our own test output
    return meta.state_dict_metadata, meta.storage_data, meta.planner_data, meta.version
