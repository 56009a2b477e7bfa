"""Make megatron-core run on a machine without a GPU (CPU tensors, gloo collectives).

megatron-core assumes CUDA in three places that matter for GPTModel + DDP + the pipeline schedules
(shared/DESIGN.md, "Verified facts"). `enable()` neutralises them, process-wide, and is called by
`harmony_mcore.parallel.distributed.init_distributed` only when `torch.cuda.is_available()` is False:

1. `torch.cuda.current_device()` returns "cpu": rotary embeddings and layers pass it as a device.
2. A `TorchFunctionMode` rewrites `device="cuda..."` (keyword or `Tensor.to` argument) to "cpu" and
   makes `Tensor.cuda()` a no-op: the schedules and DDP allocate with `device="cuda"`.
   `torch.cuda.synchronize()` becomes a no-op (pipeline p2p calls it).
3. Seeding must use `model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)`: the default
   RNG tracker forks the CUDA RNG. `init_distributed` does that; dropout stays 0.

Megatron's optimizers still need CUDA tensors: on CPU the policy uses torch AdamW over DDP main_grad.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_mode: TorchFunctionMode | None = None


def _to_cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):  # a CUDA ordinal
        return "cpu"
    return device


class _CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to:
            args = tuple(_to_cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        return func(*args, **kwargs)


def enable() -> None:
    """Apply the three neutralisations (idempotent). Refuses to run when a GPU is present."""
    global _mode
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat.enable() is for machines without a GPU; a GPU is visible here")
    if _mode is not None:
        return
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    _mode = _CudaToCpu()
    _mode.__enter__()


def enabled() -> bool:
    return _mode is not None
