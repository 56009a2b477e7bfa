"""Make megatron-core run on a machine without a GPU (CPU tensors, gloo collectives).

megatron-core assumes CUDA in the places below (docs/design.md, "Running megatron-core on CPU").
`enable()` neutralises them, process-wide, and is called by
`harmony_mcore.parallel.distributed.init_distributed` only when `torch.cuda.is_available()` is False:

1. `torch.cuda.current_device()` returns "cpu": rotary embeddings and layers pass it as a device.
2. A `TorchFunctionMode` rewrites `device="cuda..."` (keyword or `Tensor.to` argument) to "cpu" and
   makes `Tensor.cuda()` a no-op: the schedules and DDP allocate with `device="cuda"`.
   `torch.cuda.synchronize()` becomes a no-op (pipeline p2p calls it).
3. Seeding must use `model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)`: the default
   RNG tracker forks the CUDA RNG. `init_distributed` does that; dropout stays 0.
4. `Tensor.type()` (no argument) reports `torch.cuda.<X>Tensor` for CPU tensors: Megatron's optimizers
   accept only those type strings (megatron-core 0.16.1 optimizer/optimizer.py:671,690,695,
   optimizer/distrib_optimizer.py:361,420,431,582, optimizer/clip_grads.py:167).
5. `torch.cuda.current_stream()` returns a stream whose waits are no-ops: megatron-core 0.19 asks for it in every
   gradient sync (distributed/param_and_grad_buffer.py:632) to wait for CUDA-graph events, which CPUs never have.

`fix_torch_adam_fallback()` is not about the device: it repairs the distributed optimizer's checkpoint
load on megatron-core's torch-Adam fallback (no Transformer Engine, no Apex), which is what CPUs run.
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


def enable() -> None:
    """Apply the neutralisations above (idempotent). Refuses to run when a GPU is present."""
    global _mode
    if torch.cuda.is_available():
        raise RuntimeError("cpu_compat.enable() is for machines without a GPU; a GPU is visible here")
    if _mode is not None:
        return
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    _mode = _CudaToCpu()
    _mode.__enter__()


def enabled() -> bool:
    return _mode is not None


def fix_torch_adam_fallback() -> None:
    """Make the distributed optimizer's checkpoint load correct on megatron-core's torch-Adam fallback.

    Without Transformer Engine or Apex, `DistributedOptimizer` wraps torch's Adam, and its load path
    (megatron-core 0.16.1 optimizer/distrib_optimizer.py) has three faults, each fixed here (idempotent):
    a. `sharded_state_dict` calls `state_dict()`, which asserts one 'step' over all params (:641-642); an
       optimizer that never stepped (a fresh one to load into, or one whose steps were all skipped) has none:
       give it the state torch's Adam creates at its first step (step 0, zero moments: the same updates).
    b. `_set_main_param_and_optimizer_states` copies every state key (:938-940): with 'fully_reshardable'
       the checkpoint has no 'step' (KeyError), with 'dp_reshardable' it is the load template's 0: keep
       the step that `load_state_dict` restored.
    c. `load_state_dict` gives every param the SAME 'step' tensor (:818-824), which torch's Adam then
       increments in place once per param per step: give each param its own copy.
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    cls = dopt.DistributedOptimizer
    if dopt.HAVE_APEX_OR_TE or getattr(cls, "_harmony_fixed", False):
        return
    sharded_state_dict, set_states, load_state_dict = (
        cls.sharded_state_dict, cls._set_main_param_and_optimizer_states, cls.load_state_dict)

    def primed_sharded_state_dict(self, model_sharded_state_dict, is_loading=False, *args, **kwargs):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        return sharded_state_dict(self, model_sharded_state_dict, is_loading, *args, **kwargs)

    def set_states_keeping_step(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state.get(main_param, {})
        if "step" in state:
            tensors = {**tensors, "step": state["step"].clone()}
        return set_states(self, model_param, tensors)

    def load_state_dict_unaliased(self, state_dict):
        out = load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()
        return out

    cls.sharded_state_dict = primed_sharded_state_dict
    cls._set_main_param_and_optimizer_states = set_states_keeping_step
    cls.load_state_dict = load_state_dict_unaliased
    cls._harmony_fixed = True
