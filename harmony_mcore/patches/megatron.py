"""Patches of megatron-core.

`torch_adam_fallback()`: without Transformer Engine or Apex, `DistributedOptimizer` wraps torch's Adam,
and its checkpoint load (optimizer/distrib_optimizer.py) has three faults, each fixed here (idempotent;
nothing is changed when TE or Apex is present, whose fused Adam takes the other path):
  a. `sharded_state_dict` calls `state_dict()`, which asserts one 'step' over all params; an optimizer
     that never stepped (a fresh one to load into, or one whose steps were all skipped) has none: give it
     the state torch's Adam creates at its first step (step 0, zero moments: the same updates).
  b. `_set_main_param_and_optimizer_states` copies every state key: with 'fully_reshardable' the
     checkpoint has no 'step' (KeyError), with 'dp_reshardable' it is the load template's 0: keep the
     step that `load_state_dict` restored.
  c. `load_state_dict` gives every param the SAME 'step' tensor, which torch's Adam then increments in
     place once per param per step: give each param its own copy.
It can go when megatron-core's torch-Adam path round-trips a checkpoint by itself (CPUs run it).

`moe_router_without_te()`: megatron-core 0.16.1's MoE router (`moe_utils.RouterGatingLinearFunction`)
reads the name `te_general_gemm`, which moe_utils defines only when Transformer Engine imports
(`NameError` without it). Defining it as None selects the router's plain torch matmul, what the code
does when TE is present but lacks the kernel. It can go when moe_utils defines the name in both cases.
"""

from __future__ import annotations

import torch

from harmony_mcore.patches import require

WRITTEN_FOR = {"megatron-core": ">=0.16,<0.20"}
_OPT = "megatron.core.optimizer.distrib_optimizer"
TARGETS: dict[str, tuple[str, ...] | None] = {
    f"{_OPT}.HAVE_APEX_OR_TE": None,
    f"{_OPT}.DistributedOptimizer.sharded_state_dict":
        ("self", "model_sharded_state_dict", "is_loading", "sharding_type", "metadata"),
    f"{_OPT}.DistributedOptimizer._set_main_param_and_optimizer_states": ("self", "model_param", "tensors"),
    f"{_OPT}.DistributedOptimizer.load_state_dict": ("self", "state_dict"),
    "megatron.core.transformer.moe.moe_utils.RouterGatingLinearFunction.forward":
        ("ctx", "inp", "weight", "bias", "router_dtype"),
}
SOURCES = {"megatron.core.transformer.moe.moe_utils": "te_general_gemm is not None"}


def torch_adam_fallback() -> None:
    """Fix the distributed optimizer's checkpoint load on the torch-Adam fallback (see the module docstring)."""
    from megatron.core.optimizer import distrib_optimizer as dopt

    cls = dopt.DistributedOptimizer
    if dopt.HAVE_APEX_OR_TE or getattr(cls, "_harmony_fixed", False):
        return
    require("harmony_mcore.patches.megatron.torch_adam_fallback", WRITTEN_FOR)
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


def moe_router_without_te() -> None:
    """Define `moe_utils.te_general_gemm` as None when Transformer Engine did not (see the module docstring)."""
    from megatron.core.transformer.moe import moe_utils

    if hasattr(moe_utils, "te_general_gemm"):
        return
    require("harmony_mcore.patches.megatron.moe_router_without_te", WRITTEN_FOR)
    moe_utils.te_general_gemm = None
