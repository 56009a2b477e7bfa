"""The launch commands of slurm/*.sbatch, built here so they can be tested without a cluster.

    python -m harmony_mcore.slurm train CONFIG [overrides...]   -> prints the srun + torchrun line

One task per node runs torchrun, which starts one rank per GPU and meets the other nodes through a
c10d rendezvous on the first node of the job (no Ray). The same line serves 1 and N nodes.
Environment read (set by Slurm and the sbatch script): SLURM_JOB_ID, SLURM_NNODES,
SLURM_GPUS_ON_NODE (or HARMONY_GPUS_PER_NODE), MASTER_ADDR, MASTER_PORT (default 29500),
HARMONY_CONTAINER / HARMONY_CONTAINER_MOUNTS (pyxis/enroot image; optional).

Ranks per node: HARMONY_GPUS_PER_NODE, else the job's GPUs on the node (SLURM_GPUS_ON_NODE), else
the GPUs `nvidia-smi` sees on this node (a cluster without GPU GRES), else, on CPU nodes, the
config's layout (tp*pp*dp, dp=1 if unset) spread evenly over the nodes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    job_id: str
    nodes: int
    gpus_per_node: int | None  # None: no GPU on the node (ranks come from the config's layout)
    master_addr: str
    master_port: int = 29500
    container: str | None = None
    container_mounts: str | None = None
    workdir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Job:
        missing = [k for k in ("SLURM_JOB_ID", "SLURM_NNODES", "MASTER_ADDR") if not env.get(k)]
        if missing:
            raise SystemExit(f"harmony slurm: {', '.join(missing)} not set: run this inside an sbatch allocation "
                             "(slurm/train.sbatch sets MASTER_ADDR from the first node of the job)")
        gpus = "HARMONY_GPUS_PER_NODE" if env.get("HARMONY_GPUS_PER_NODE") else "SLURM_GPUS_ON_NODE"
        count = _count(env, gpus, 0, 4096) if env.get(gpus) else visible_gpus()
        return cls(env["SLURM_JOB_ID"], _count(env, "SLURM_NNODES", 1, 1 << 20), count or None, env["MASTER_ADDR"],
                   _count(env, "MASTER_PORT", 1, 65535, default="29500"), env.get("HARMONY_CONTAINER") or None,
                   env.get("HARMONY_CONTAINER_MOUNTS") or None, env.get("SLURM_SUBMIT_DIR"))


def _count(env: Mapping[str, str], key: str, lo: int, hi: int, default: str | None = None) -> int:
    """An integer setting of the job's environment (Slurm writes counts like `8(x2)`: the first number)."""
    text = env.get(key) or default or ""
    try:
        value = int(text.split("(")[0])
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise SystemExit(f"harmony slurm: {key}={text!r} is not an integer in [{lo}, {hi}]: fix it (or unset it) "
                         "in the job's environment")
    return value


def visible_gpus() -> int:
    """GPUs on this node by `nvidia-smi -L` (0 without the tool): no torch import to build a command line."""
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    return sum(line.startswith("GPU ") for line in out.splitlines())


def ranks_per_node(job: Job, config: str, overrides: Sequence[str]) -> int:
    """One rank per GPU; on CPU nodes the config's layout over the job's nodes."""
    if job.gpus_per_node:
        return job.gpus_per_node
    from harmony_mcore.config import ConfigError, load_config

    par = load_config(config, overrides).parallel
    world = par.tp * par.pp * (par.dp or 1)
    if world % job.nodes:
        raise ConfigError(f"no GPU on the nodes and the layout's {world} ranks (tp*pp*dp) do not split over "
                          f"{job.nodes} nodes: change --nodes, or set HARMONY_GPUS_PER_NODE")
    return world // job.nodes


def srun_prefix(job: Job) -> list[str]:
    cmd = ["srun", f"--nodes={job.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpu-bind=none"]
    if job.container:
        cmd.append(f"--container-image={job.container}")
        if job.workdir:
            cmd.append(f"--container-workdir={job.workdir}")
        if job.container_mounts:
            cmd.append(f"--container-mounts={job.container_mounts}")
    return cmd


def torchrun(job: Job, nproc: int, module: str, args: Sequence[str]) -> list[str]:
    return ["python", "-m", "torch.distributed.run", f"--nnodes={job.nodes}", f"--nproc_per_node={nproc}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={job.master_addr}:{job.master_port}",
            f"--rdzv_id=harmony-{job.job_id}", "--max_restarts=0", "-m", module, *args]


def train_command(job: Job, config: str, overrides: Sequence[str]) -> list[str]:
    """srun (one task per node) + torchrun (one rank per GPU) + `harmony train` inside."""
    nproc = ranks_per_node(job, config, overrides)
    return srun_prefix(job) + torchrun(job, nproc, "harmony_mcore.train_cli", [config, *overrides])


def single_task_command(job: Job, subcommand: str, args: Sequence[str]) -> list[str]:
    """One process on the first node (conversion, evaluation): `harmony <subcommand> ...`."""
    from dataclasses import replace

    prefix = srun_prefix(replace(job, nodes=1))
    return prefix + ["python", "-m", "harmony_mcore.cli", subcommand, *args]


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "convert", "eval"):
        print("usage: python -m harmony_mcore.slurm train CONFIG [overrides...] | convert ARGS... | eval ARGS...",
              file=sys.stderr)
        return 2
    from harmony_mcore.config import ConfigError

    job = Job.from_env(os.environ if env is None else env)
    kind, rest = argv[0], argv[1:]
    if kind == "train":
        if not rest:
            print("harmony slurm: train needs a CONFIG (preset name or .yaml)", file=sys.stderr)
            return 2
        try:
            cmd = train_command(job, rest[0], rest[1:])
        except ConfigError as e:
            print(f"harmony slurm: {e}", file=sys.stderr)
            return 2
    else:
        cmd = single_task_command(job, kind, rest)
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
