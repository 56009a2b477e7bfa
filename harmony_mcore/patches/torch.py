"""Patches of PyTorch.

`cuda_calls_on_cpu()`: megatron-core assumes CUDA in the places below (docs/design.md, "Running
megatron-core on CPU"; megatron-core 0.16.1 and 0.19.2).
It neutralises them, process-wide; `harmony_mcore.parallel.distributed.init_distributed` calls it
only on a machine without a GPU:

1. `torch.cuda.current_device()` returns "cpu": rotary embeddings and layers pass it as a device.
2. A `TorchFunctionMode` rewrites `device="cuda..."` (keyword or `Tensor.to` argument) to "cpu" and
   makes `Tensor.cuda()` a no-op: the schedules and DDP allocate with `device="cuda"`.
   `torch.cuda.synchronize()` becomes a no-op (pipeline p2p calls it).
3. `Tensor.type()` (no argument) reports `torch.cuda.<X>Tensor` for CPU tensors: Megatron's optimizers
   accept only those type strings (megatron-core 0.16.1 optimizer/optimizer.py, distrib_optimizer.py,
   clip_grads.py).
4. `torch.cuda.current_stream()` returns a stream whose waits are no-ops: megatron-core 0.19 asks for it in
   every gradient sync (distributed/param_and_grad_buffer.py) to wait for CUDA-graph events, which CPUs
   never have.
Seeding is not patched: `init_distributed` seeds Megatron's RNG tracker with `inference_rng_tracker=True`
on CPU (the default tracker forks the CUDA RNG).

`restricted_checkpoint_reader()`: a torch_dist checkpoint's `.metadata` is a pickle that PyTorch's
reader (and so Megatron's `dist_checkpointing.load`) opens with `pickle.load`, and its byte items are
read with `torch.load(weights_only=False)`: a crafted checkpoint runs code while loading. It routes
both through restricted readers (`harmony_mcore.safe_pickle`) in this process; saving is untouched.
"""

from __future__ import annotations

import threading

import torch
from torch.overrides import TorchFunctionMode

from harmony_mcore.patches import require

WRITTEN_FOR = {"torch": ">=2.9,<2.14"}
TARGETS: dict[str, tuple[str, ...] | None] = {
    "torch.cuda.current_device": (),
    "torch.cuda.synchronize": ("device",),
    "torch.cuda.current_stream": ("device",),
    "torch.overrides.TorchFunctionMode.__torch_function__": ("self", "func", "types", "args", "kwargs"),
    "torch.Tensor.type": None,
    "torch.Tensor.cuda": None,
    "torch.Tensor.to": None,
    "torch.distributed.checkpoint.filesystem.pickle": None,
    "torch.distributed.checkpoint.default_planner.DefaultLoadPlanner.load_bytes": ("self", "read_item", "value"),
    "torch.distributed.checkpoint._traverse.set_element": ("root_dict", "path", "value"),
}
# The metadata is read through the module's `pickle` name (what the replacement of it relies on).
SOURCES = {"torch.distributed.checkpoint.filesystem": "pickle.load("}

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
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and not out.startswith("torch.cuda."):
            out = "torch.cuda." + out[len("torch."):]
        return out


class _NoStream:
    """What the CPU has instead of a CUDA stream: work is synchronous, nothing to wait for."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass


def cuda_calls_on_cpu() -> None:
    """Apply the neutralisations above (idempotent). Refuses to run when a GPU is present."""
    global _mode
    if torch.cuda.is_available():
        raise RuntimeError("cuda_calls_on_cpu() is for machines without a GPU; a GPU is visible here")
    if _mode is not None:
        return
    require("harmony_mcore.patches.torch.cuda_calls_on_cpu", WRITTEN_FOR)
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    _mode = _CudaToCpu()
    _mode.__enter__()  # never exited: the whole process runs on CPU


def _load_bytes_weights_only(self, read_item, value) -> None:
    # DefaultLoadPlanner.load_bytes (which Megatron's planner inherits), weights_only=True instead of False
    from torch.distributed.checkpoint._traverse import set_element

    obj = torch.load(value, weights_only=True)
    if self.flatten_state_dict:
        set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
    else:
        self.state_dict[read_item.dest_index.fqn] = obj


_lock = threading.Lock()


def restricted_checkpoint_reader() -> None:
    """Make PyTorch's checkpoint reader (also used by Megatron) load only data, in this process. Idempotent."""
    import torch.distributed.checkpoint.filesystem as fs
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from harmony_mcore.safe_pickle import PickleForDCP

    with _lock:
        if isinstance(fs.pickle, PickleForDCP):
            return
        require("harmony_mcore.patches.torch.restricted_checkpoint_reader", WRITTEN_FOR)
        fs.pickle = PickleForDCP()
        DefaultLoadPlanner.load_bytes = _load_bytes_weights_only
