"""Checkpoints of a run: everything needed to continue as if never stopped, on CPU and GPU alike.

    <dir>/step_0000040/
        model/                   Megatron dist-checkpoint (torch_dist) of the policy: loads at any TP/PP,
                                 and `harmony convert mcore-to-hf` reads it
        optimizer/               Megatron's optimizer state (fp32 main params, Adam moments, step), dist-checkpoint;
                                 the distributed optimizer's in the 'fully_reshardable' format
        rng_rank00000.pt         RNG states of the rank: torch, CUDA, Python's, Megatron's model-parallel tracker
        state.json               step (= data position, lr schedule and strategy-warmup counter),
                                 consecutive non-finite steps, the metrics history, the layout

Atomic: every rank writes into `.tmp-step_*`, the ranks agree that all writes succeeded, and rank 0 publishes
the directory with one rename; a save that fails part-way (on any rank) removes its temporary directory and
raises, leaving the previous checkpoints as they were. The last `keep_last` are kept. Megatron's writer uses
spawned processes: entry points that save must sit behind `if __name__ == "__main__"` (harmony_mcore.train_cli
does).

Resume into another layout: TP, PP (with or without virtual stages) and DP may change (dist-checkpointing
reshards model and optimizer; the RNG streams then stay as seeded at start-up, since a rank's role changed);
a different dtype or a switch of the distributed optimizer is refused, naming the change.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harmony_mcore import checkpoint_check, device
from harmony_mcore.bridge.dist_ckpt import CheckpointError
from harmony_mcore.config import ConfigError

# The distributed optimizer's default format ('fully_sharded_model_space') is refused by dist-checkpointing
# ("ShardedTensor.flattened_range is not supported"); 'fully_reshardable' also reshards over TP and PP.
_OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "fully_reshardable"}
# Layout keys that must match for a resume: the optimizer state's structure depends on them.
_MUST_MATCH = {"dtype": "model.dtype", "distributed_optimizer": "parallel.distributed_optimizer"}


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def _model_sharded(policy) -> dict:
    # One entry per virtual-pipeline chunk; the checkpoint's tensor keys are Megatron's global ones.
    return {f"chunk{i}": m.sharded_state_dict() for i, m in enumerate(policy.modules)}


def _optimizer_sharded(policy, *, is_loading: bool) -> dict:
    # Built on a fresh model dict: dist_checkpointing.save mutates the dict it saves, and the optimizer finds its
    # params in the model dict by tensor identity.
    return policy.optimizer.sharded_state_dict(_model_sharded(policy), is_loading=is_loading,
                                               metadata=_OPTIMIZER_FORMAT)


def _layout(policy) -> dict[str, Any]:
    from megatron.core import parallel_state as ps

    return {"world": dist.get_world_size(), "tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(), "vpp": policy.parallel.vpp,
            "dp": ps.get_data_parallel_world_size(), "dtype": policy.dtype,
            "distributed_optimizer": policy.parallel.distributed_optimizer}


def _rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "tracker": get_cuda_rng_tracker().get_states()}
    if device.on_gpu:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and device.on_gpu:
        torch.cuda.set_rng_state(state["cuda"])


def save(root: Path, step: int, policy, state: dict[str, Any], *, keep_last: int, group=None) -> Path:
    """Collective: every rank writes its part; rank 0 publishes it and prunes old ones."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "model").mkdir(parents=True)
        (tmp / "optimizer").mkdir()
    dist.barrier(group=group)
    error = None
    try:
        dist_checkpointing.save(_model_sharded(policy), str(tmp / "model"))
        dist_checkpointing.save(_optimizer_sharded(policy, is_loading=False), str(tmp / "optimizer"))
        # Python's random state holds only ints and tuples: loadable with weights_only.
        torch.save(_rng_state(), tmp / f"rng_rank{rank:05d}.pt")
        if rank == 0:
            (tmp / "state.json").write_text(json.dumps({**state, "layout": _layout(policy)}) + "\n")
    except Exception as e:  # noqa: BLE001 - every rank must learn that one failed before anyone publishes
        error = e
    failed = torch.tensor([float(error is not None)])
    dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=group)
    if failed.item():
        dist.barrier(group=group)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"saving checkpoint {final} failed ({error!r} on this rank, or on another); "
                              f"{checkpoint_check.latest(root) or 'no earlier checkpoint'} is the latest complete "
                              "one") from error
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for old in sorted(root.glob("step_*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=group)
    return final


def resume(setting: str, root: Path, policy, group=None, log=print) -> dict[str, Any]:
    """Load the checkpoint that checkpoint.resume names (auto = the newest complete one under root,
    if any) into the policy, its optimizer and this rank's RNG; returns its state ({} when starting fresh)."""
    path = checkpoint_check.pick(setting, root, log)  # complete, with safe metadata
    if path is None:
        return {}
    return load(path, policy, group)


def load(path: Path, policy, group=None) -> dict[str, Any]:
    """Load checkpoint `path` (a step_* directory) into the policy, its optimizer and this rank's RNG."""
    from megatron.core import dist_checkpointing

    from harmony_mcore.bridge.dist_ckpt import load_model_weights
    from harmony_mcore.patches.torch import restricted_checkpoint_reader

    restricted_checkpoint_reader()  # Megatron's optimizer load below unpickles metadata too
    if not (path / "state.json").is_file():
        raise ConfigError(f"checkpoint.resume: {path} is not a complete checkpoint (no state.json); "
                          f"use auto, never or a step_* directory")
    state = json.loads((path / "state.json").read_text())
    saved, now = state.get("layout", {}), _layout(policy)
    changed = [f"{key} {saved.get(key)} -> {now[key]}" for key in _MUST_MATCH if saved.get(key) != now[key]]
    if changed:
        raise ConfigError(f"{path} cannot resume this run: {', '.join(changed)} changes the optimizer state's "
                          f"structure. Set {', '.join(_MUST_MATCH[c.split()[0]] for c in changed)} as saved, or "
                          f"start a new run from its weights with model.path={path / 'model'}")
    load_model_weights(policy.modules, path / "model")
    loaded = dist_checkpointing.load(_optimizer_sharded(policy, is_loading=True), str(path / "optimizer"))
    with torch.no_grad():  # the dp_reshardable/fully_reshardable loaders copy into views of leaf params
        policy.optimizer.load_state_dict(loaded)
    if saved == now:  # in another layout rank r has another role: it keeps the streams seeded at start-up
        _set_rng_state(torch.load(path / f"rng_rank{dist.get_rank():05d}.pt", weights_only=True))
    dist.barrier(group=group)
    return state
