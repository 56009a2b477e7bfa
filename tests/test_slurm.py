"""slurm/*.sbatch parse, and the launch line they build is right for 1 and 4 nodes."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from harmony_mcore.slurm import Job, main, single_task_command, train_command

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").glob("*"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("nodes", [1, 4])
def test_train_command(nodes):
    job = Job("777", nodes, 8, "gpu-a01")
    cmd = train_command(job, "qwen3-8b-math500-4node", ["algorithm.lr=2e-6", "name=my run"])
    srun, rest = cmd[:cmd.index("python")], cmd[cmd.index("python"):]
    assert srun == ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpu-bind=none"]
    assert rest == ["python", "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc_per_node=8",
                    "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-a01:29500", "--rdzv_id=harmony-777",
                    "--max_restarts=0", "-m", "harmony_mcore.train_cli", "qwen3-8b-math500-4node",
                    "algorithm.lr=2e-6", "name=my run"]


def test_container_and_single_task_commands():
    job = Job("5", 4, 8, "n1", container="/img.sqsh", container_mounts="/data:/data", workdir="/home/u/repo")
    cmd = single_task_command(job, "convert", ["hf-to-mcore", "--hf", "/m"])
    assert cmd[:4] == ["srun", "--nodes=1", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert {"--container-image=/img.sqsh", "--container-mounts=/data:/data", "--container-workdir=/home/u/repo"} <= set(cmd)
    assert cmd[-7:] == ["python", "-m", "harmony_mcore.cli", "convert", "hf-to-mcore", "--hf", "/m"]


def test_main_reports_missing_slurm_env(capsys):
    with pytest.raises(SystemExit, match="MASTER_ADDR"):
        main(["train", "cpu"], env={"SLURM_JOB_ID": "1", "SLURM_NNODES": "1"})
    assert main(["bogus"], env={}) == 2


@pytest.mark.parametrize("key, value", [("SLURM_NNODES", "two"), ("SLURM_NNODES", "0"),
                                        ("HARMONY_GPUS_PER_NODE", "8x"), ("SLURM_GPUS_ON_NODE", "-1"),
                                        ("MASTER_PORT", "99999")])
def test_main_reports_a_malformed_count(key, value):
    env = {"SLURM_JOB_ID": "1", "SLURM_NNODES": "1", "MASTER_ADDR": "n1", "SLURM_GPUS_ON_NODE": "8", key: value}
    with pytest.raises(SystemExit, match=f"harmony slurm: {key}='{value}' is not an integer in"):
        main(["train", "cpu"], env=env)


def _dry_run(tmp_path, scontrol: str, **env) -> subprocess.CompletedProcess:
    """slurm/train.sbatch as sbatch would run it (dry run), with `scontrol` replaced by a script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text("#!/bin/bash\n" + scontrol)
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NNODES": "1",
           "SLURM_JOB_NODELIST": "node[00001-20000]", "SLURM_GPUS_ON_NODE": "8", "SLURM_SUBMIT_DIR": str(REPO),
           "HARMONY_DRY_RUN": "1", **env}
    if "MASTER_ADDR" not in env or not env["MASTER_ADDR"]:
        env.pop("MASTER_ADDR", None)
    return subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "cpu"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_sbatch_with_a_long_node_list(tmp_path):
    # 20,000 names: a `| head -n1` reader would end scontrol by SIGPIPE and pipefail the job (exit 141)
    proc = _dry_run(tmp_path, 'if [ "$2" = hostnames ]; then seq -f "node%05g" 1 20000; exit; fi\n'
                              'echo "NodeName=$3 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=$3"\n', MASTER_ADDR="")
    assert proc.returncode == 0, proc.stderr
    assert "--rdzv_endpoint=10.1.2.3:29500" in proc.stdout


@pytest.mark.parametrize("scontrol, env, said", [
    ('echo "slurm_load_node: Unable to contact slurm controller" >&2; exit 1\n', {"MASTER_ADDR": ""},
     ["'scontrol show hostnames node[00001-20000]' gave no node"]),
    ("exit 0\n", {"MASTER_ADDR": "n1", "SLURM_NNODES": "two"},  # and the script names its failing command
     ["harmony slurm: SLURM_NNODES='two' is not an integer", "train.sbatch line"]),
])
def test_sbatch_failures_say_what_failed(tmp_path, scontrol, env, said):
    proc = _dry_run(tmp_path, scontrol, **env)
    assert proc.returncode != 0 and all(s in proc.stderr for s in said), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("nodes", [1, 4])
def test_sbatch_script_builds_the_line(tmp_path, nodes):
    """Run slurm/train.sbatch as sbatch would (dry run), with scontrol stubbed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nfor i in $(seq 1 4); do echo node0$i; done\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": str(nodes), "SLURM_JOB_NODELIST": "node0[1-4]", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_SUBMIT_DIR": str(REPO), "HARMONY_DRY_RUN": "1"}
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch"), "qwen3-8b-math500-2node", "seed=3"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.split(": ", 1)[1].strip()
    cmd = shlex.split(line)
    assert cmd[0] == "srun" and f"--nodes={nodes}" in cmd and f"--nnodes={nodes}" in cmd
    assert "--rdzv_endpoint=node01:29500" in cmd and "--rdzv_id=harmony-4242" in cmd
    assert cmd[-3:] == ["harmony_mcore.train_cli", "qwen3-8b-math500-2node", "seed=3"]


def test_sbatch_without_config_fails_with_usage():
    proc = subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.parametrize("nodes, env, nproc", [
    (1, {}, 2),                                # CPU nodes: the config's layout (TP=2), not 8
    (2, {}, 1),                                # ... spread over the nodes: TP=2 across two nodes
    (1, {"SLURM_GPUS_ON_NODE": "0"}, 2),
    (2, {"SLURM_GPUS_ON_NODE": "4"}, 4),       # GPU nodes: one rank per GPU of the job
    (1, {"HARMONY_GPUS_PER_NODE": "3", "SLURM_GPUS_ON_NODE": "8"}, 3),
])
def test_ranks_per_node(monkeypatch, capsys, nodes, env, nproc):
    import harmony_mcore.slurm as slurm

    monkeypatch.setattr(slurm, "visible_gpus", lambda: 0)
    base = {"SLURM_JOB_ID": "9", "SLURM_NNODES": str(nodes), "MASTER_ADDR": "n1"}
    assert main(["train", "cpu", "seed=2"], env={**base, **env}) == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert f"--nproc_per_node={nproc}" in cmd and f"--nnodes={nodes}" in cmd


def test_ranks_per_node_from_visible_gpus(monkeypatch, capsys):
    import harmony_mcore.slurm as slurm

    monkeypatch.setattr(slurm, "visible_gpus", lambda: 8)  # a cluster without GPU GRES: count the node's GPUs
    assert main(["train", "cpu"], env={"SLURM_JOB_ID": "9", "SLURM_NNODES": "2", "MASTER_ADDR": "n1"}) == 0
    assert "--nproc_per_node=8" in capsys.readouterr().out


def test_cpu_layout_that_does_not_split_over_the_nodes(monkeypatch, capsys):
    import harmony_mcore.slurm as slurm

    monkeypatch.setattr(slurm, "visible_gpus", lambda: 0)
    assert main(["train", "cpu"], env={"SLURM_JOB_ID": "9", "SLURM_NNODES": "3", "MASTER_ADDR": "n1"}) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmony slurm: ") and "HARMONY_GPUS_PER_NODE" in err and err.count("\n") == 1
