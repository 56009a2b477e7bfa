"""Which device and collective backend this process uses, decided once (CUDA when visible, else CPU).

`device_type` and `device_module` (`torch.cuda` or `torch.cpu`) follow torchtitan's convention;
code asks `on_gpu` instead of `torch.cuda.is_available()`, and uses `current()` for new tensors.
On CPU, Megatron runs over gloo with its CUDA assumptions neutralised
(`harmony_mcore.patches.torch.cuda_calls_on_cpu`).
"""

from __future__ import annotations

import torch

device_type: str = "cuda" if torch.cuda.is_available() else "cpu"
device_module = getattr(torch, device_type)
on_gpu: bool = device_type == "cuda"
backend: str = "nccl" if on_gpu else "gloo"


def current() -> torch.device:
    """The device of this rank (after `torch.cuda.set_device` on GPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")


def synchronize() -> None:
    device_module.synchronize()


def empty_cache() -> None:
    """Hand cached, unused GPU memory back (nothing to do on CPU)."""
    if on_gpu:
        torch.cuda.empty_cache()
