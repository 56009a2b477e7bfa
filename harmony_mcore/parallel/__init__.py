"""Distributed start-up (torchrun/Slurm), Megatron parallel state, and CPU/gloo compatibility."""

from harmony_mcore.parallel.distributed import destroy_distributed, init_distributed, init_model_parallel, launch_env

__all__ = ["init_distributed", "init_model_parallel", "destroy_distributed", "launch_env"]
