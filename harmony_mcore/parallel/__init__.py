"""Distributed start-up (torchrun), Megatron parallel state, and vocab-parallel log-probs."""

from harmony_mcore.parallel.distributed import destroy_distributed, init_distributed, init_model_parallel, launch_env

__all__ = ["init_distributed", "init_model_parallel", "destroy_distributed", "launch_env"]
