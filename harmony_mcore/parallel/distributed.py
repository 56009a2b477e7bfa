"""Process-group start-up and teardown.

One process per GPU (or per CPU worker), started by torchrun (on Slurm: `srun torchrun`, as
slurm/train.sbatch does). `launch_env` is the one reader of the launch variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). NCCL on GPU, gloo on CPU (with
`harmony_mcore.patches.torch.cuda_calls_on_cpu` applied).
Megatron's parallel state is then initialised for TP x PP (x virtual PP) x DP.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

from harmony_mcore import device
from harmony_mcore.config import ConfigError, ParallelConfig


@dataclass(frozen=True)
class LaunchEnv:
    launched: bool  # started by torchrun (a bare process is rank 0 of 1)
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read rank/world/rendezvous from torchrun's variables; a bare process is rank 0 of 1."""
    env = os.environ if environ is None else environ
    launched = "RANK" in env and "WORLD_SIZE" in env
    rank, world, local = (int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))) if launched \
        else (0, 1, 0)
    if world > 1 and "MASTER_ADDR" not in env:
        raise ConfigError("MASTER_ADDR is not set for a multi-process launch: launch with torchrun "
                          "(on Slurm: srun torchrun, as slurm/train.sbatch does)")
    addr = env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else (29500 if world > 1 else _free_port())
    return LaunchEnv(launched, rank, world, local, addr, port)


def init_distributed(parallel: ParallelConfig, *, seed: int = 1234, timeout_min: int = 30) -> LaunchEnv:
    """Create the default process group and Megatron's TP/PP/DP groups; seed Megatron's RNG tracker.

    Call `harmony_mcore.preflight.preflight` first: this function assumes a valid layout.
    """
    le = launch_env()
    if device.on_gpu:
        torch.cuda.set_device(le.local_rank)
    else:
        from harmony_mcore.patches.torch import cuda_calls_on_cpu

        cuda_calls_on_cpu()
    if not dist.is_initialized():
        # env:// reuses torchrun's store; a bare process gets the variables it reads.
        for key, val in (("MASTER_ADDR", le.master_addr), ("MASTER_PORT", le.master_port),
                         ("RANK", le.rank), ("WORLD_SIZE", le.world_size), ("LOCAL_RANK", le.local_rank)):
            os.environ.setdefault(key, str(val))
        dist.init_process_group(backend=device.backend, init_method="env://",
                                rank=le.rank, world_size=le.world_size, timeout=timedelta(minutes=timeout_min))
    init_model_parallel(parallel, seed=seed)
    return le


def init_model_parallel(parallel: ParallelConfig, *, seed: int = 1234) -> None:
    """(Re)build Megatron's TP/PP/DP groups on the existing process group and seed its RNG tracker."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=parallel.tp,
                                 pipeline_model_parallel_size=parallel.pp,
                                 virtual_pipeline_model_parallel_size=parallel.vpp)
    # The default tracker forks the CUDA RNG; the inference tracker works on CPU too.
    model_parallel_cuda_manual_seed(seed, inference_rng_tracker=not device.on_gpu)
    torch.manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
