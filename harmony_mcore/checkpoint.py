"""Checkpoints of a run: everything needed to continue as if never stopped.

    <dir>/step_0000040/
        model/                   Megatron dist-checkpoint (torch_dist) of the policy: loads at any TP/PP,
                                 and `harmony convert mcore-to-hf` reads it
        optimizer/               Megatron optimizer (GPU), dist-checkpoint
        optimizer_rank00000.pt   torch AdamW state of this rank's shards (CPU path: same layout to resume)
        rng_rank00000.pt         torch (+ CUDA) RNG state of the rank
        state.json               step (= data position, lr schedule and strategy-warmup counter),
                                 consecutive non-finite steps, the metrics history, the layout

Writes go to `.tmp-step_*` and become visible by one rename, so a killed save leaves no half
checkpoint; the last `keep_last` are kept. Megatron's writer uses spawned processes: entry points
that save must sit behind `if __name__ == "__main__"` (harmony_mcore.train_cli does).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harmony_mcore.config import ConfigError


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def _model_sharded(policy) -> dict:
    # One entry per virtual-pipeline chunk; the checkpoint's tensor keys are Megatron's global ones.
    return {f"chunk{i}": m.sharded_state_dict() for i, m in enumerate(policy.modules)}


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    return {"world": dist.get_world_size(), "tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size()}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


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
    model_sd = _model_sharded(policy)
    dist_checkpointing.save(model_sd, str(tmp / "model"))
    if hasattr(policy.optimizer, "sharded_state_dict"):  # Megatron's optimizer (GPU)
        dist_checkpointing.save(policy.optimizer.sharded_state_dict(model_sd), str(tmp / "optimizer"))
    else:
        torch.save(policy.optimizer.state_dict(), tmp / f"optimizer_rank{rank:05d}.pt")
    torch.save(_rng_state(), tmp / f"rng_rank{rank:05d}.pt")
    dist.barrier(group=group)
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({**state, "layout": _layout()}) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for old in sorted(root.glob("step_*"))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=group)
    return final


def resume(setting: str, root: Path, policy, group=None, log=print) -> dict[str, Any]:
    """Load the checkpoint that checkpoint.resume names (auto = the newest complete one under root,
    if any) into the policy and this rank's RNG; returns its state ({} when starting fresh)."""
    from megatron.core import dist_checkpointing

    from harmony_mcore.bridge.dist_ckpt import load_model_weights
    from harmony_mcore.checkpoint_check import pick

    path = pick(setting, root, log)  # checks completeness, and the metadata with the safe unpickler
    if path is None:
        return {}
    state = json.loads((path / "state.json").read_text())
    if state["layout"] != _layout() and not hasattr(policy.optimizer, "sharded_state_dict"):
        raise ConfigError(f"{path} was saved with layout {state['layout']}, this run has {_layout()}: on CPU the "
                          "optimizer state is per rank, so resume with the same parallel layout (or start a new "
                          f"run from its weights with model.path={path / 'model'})")
    load_model_weights(policy.modules, path / "model")
    rank = dist.get_rank()
    if hasattr(policy.optimizer, "sharded_state_dict"):
        model_sd = _model_sharded(policy)
        loaded = dist_checkpointing.load(policy.optimizer.sharded_state_dict(model_sd, is_loading=True),
                                         str(path / "optimizer"))
        policy.optimizer.load_state_dict(loaded)
    else:
        policy.optimizer.load_state_dict(torch.load(path / f"optimizer_rank{rank:05d}.pt", weights_only=True))
    rng = torch.load(path / f"rng_rank{rank:05d}.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    dist.barrier(group=group)
    return state
