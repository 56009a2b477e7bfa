"""The launch commands of slurm/*.sbatch, built here so they can be tested without a cluster.

    python -m harmony_mcore.slurm train CONFIG [overrides...]   -> prints the srun + torchrun line

One task per node runs torchrun, which starts one rank per GPU and meets the other nodes through a
c10d rendezvous on the first node of the job (no Ray). The same line serves 1 and N nodes.
Environment read (set by Slurm and the sbatch script): SLURM_JOB_ID, SLURM_NNODES,
SLURM_GPUS_ON_NODE (or HARMONY_GPUS_PER_NODE), MASTER_ADDR, MASTER_PORT (default 29500),
HARMONY_CONTAINER / HARMONY_CONTAINER_MOUNTS (pyxis/enroot image; optional).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    job_id: str
    nodes: int
    gpus_per_node: int
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
        gpus = env.get("HARMONY_GPUS_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "8"
        return cls(env["SLURM_JOB_ID"], int(env["SLURM_NNODES"]), int(gpus.split("(")[0]), env["MASTER_ADDR"],
                   int(env.get("MASTER_PORT", "29500")), env.get("HARMONY_CONTAINER") or None,
                   env.get("HARMONY_CONTAINER_MOUNTS") or None, env.get("SLURM_SUBMIT_DIR"))


def srun_prefix(job: Job) -> list[str]:
    cmd = ["srun", f"--nodes={job.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpu-bind=none"]
    if job.container:
        cmd.append(f"--container-image={job.container}")
        if job.workdir:
            cmd.append(f"--container-workdir={job.workdir}")
        if job.container_mounts:
            cmd.append(f"--container-mounts={job.container_mounts}")
    return cmd


def torchrun(job: Job, module: str, args: Sequence[str]) -> list[str]:
    return ["python", "-m", "torch.distributed.run", f"--nnodes={job.nodes}", f"--nproc_per_node={job.gpus_per_node}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={job.master_addr}:{job.master_port}",
            f"--rdzv_id=harmony-{job.job_id}", "--max_restarts=0", "-m", module, *args]


def train_command(job: Job, config: str, overrides: Sequence[str]) -> list[str]:
    """srun (one task per node) + torchrun (one rank per GPU) + `harmony train` inside."""
    return srun_prefix(job) + torchrun(job, "harmony_mcore.train_cli", [config, *overrides])


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
    job = Job.from_env(os.environ if env is None else env)
    kind, rest = argv[0], argv[1:]
    if kind == "train":
        if not rest:
            print("harmony slurm: train needs a CONFIG (preset name or .yaml)", file=sys.stderr)
            return 2
        cmd = train_command(job, rest[0], rest[1:])
    else:
        cmd = single_task_command(job, kind, rest)
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
