"""Checks of the parallel and batch layout that run before any process group or GPU memory exists.

`preflight(run_cfg, world_size, hf_config)` raises ConfigError with the fix on the first problem and
returns the data-parallel size. It needs only the config and the model's config.json content.
"""

from __future__ import annotations

from typing import Any

import importlib.util

from harmony_mcore import device
from harmony_mcore.config import ConfigError, RunConfig
from harmony_mcore.models import families


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def preflight(run_cfg: RunConfig, world_size: int, hf_config: Any = None, *, on_gpu: bool | None = None) -> int:
    """Validate TP/PP/VPP/DP against the world size, the model shape and the batch; return DP."""
    par, model = run_cfg.parallel, run_cfg.model
    par.validate()
    model.validate()
    hf_config = hf_config if hf_config is not None else model.hf_config
    if hf_config is None:
        raise ConfigError("no model config: set model.hf_config or model.path to a directory with config.json")
    m = families.shape(hf_config)
    on_gpu = device.on_gpu if on_gpu is None else on_gpu
    tp, pp, vpp = par.tp, par.pp, par.vpp
    if not on_gpu and model.dtype != "fp32":
        raise ConfigError(f"model.dtype={model.dtype} needs a GPU: set model.dtype=fp32 on CPU")

    if par.sequence_parallel and tp > 1 and not (on_gpu and importlib.util.find_spec("transformer_engine")):
        raise ConfigError("parallel.sequence_parallel needs Transformer Engine on GPU (Megatron's local-spec norm "
                          "does not support it): set parallel.sequence_parallel=false")
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not a multiple of parallel.tp*parallel.pp = {tp * pp}: "
                          f"launch a multiple of {tp * pp} processes or pick tp*pp among {_divisors(world_size)}")
    dp = world_size // (tp * pp)
    if par.dp is not None and par.dp != dp:
        raise ConfigError(f"parallel.dp={par.dp} but world size {world_size} = tp {tp} x pp {pp} x dp {dp}: "
                          f"set parallel.dp={dp} (or null) or launch {tp * pp * par.dp} processes")

    heads, kv = m.heads, m.kv_heads
    if heads % tp:
        raise ConfigError(f"{heads} attention heads are not divisible by parallel.tp={tp}: "
                          f"use tp in {[d for d in _divisors(heads) if kv % d == 0]}")
    if kv % tp:
        raise ConfigError(f"{kv} KV heads (query groups) are not divisible by parallel.tp={tp}: "
                          f"use tp in {_divisors(kv)}")

    layers = m.layers
    stages = pp * (vpp or 1)
    if layers % stages:
        what = f"parallel.pp*parallel.vpp = {pp}*{vpp}" if vpp else f"parallel.pp={pp}"
        raise ConfigError(f"{layers} layers are not divisible by {what}: pick pp{'*vpp' if vpp else ''} "
                          f"among {_divisors(layers)}")

    rows = run_cfg.data.problems_per_step * run_cfg.rollout.n  # rows per view per step
    mbs = par.micro_batch_size
    if rows % (dp * mbs):
        if rows % dp:
            fix = f"make data.problems_per_step*rollout.n a multiple of dp={dp}"
        else:
            fix = f"set parallel.micro_batch_size to a divisor of {rows // dp}, e.g. " \
                  f"{max(d for d in _divisors(rows // dp) if d <= mbs)}"
        raise ConfigError(f"{rows} rows per view (data.problems_per_step {run_cfg.data.problems_per_step} x "
                          f"rollout.n {run_cfg.rollout.n}) do not split into dp={dp} x micro_batch_size={mbs}: {fix}")
    if vpp and (rows // (dp * mbs)) % pp:
        raise ConfigError(f"virtual pipeline needs the micro-batches per rank ({rows // (dp * mbs)}) to be a multiple "
                          f"of parallel.pp={pp}: lower parallel.micro_batch_size or raise data.problems_per_step")

    rtp = run_cfg.rollout.tp
    if world_size % rtp:
        raise ConfigError(f"rollout.tp={rtp} does not divide the world size {world_size}: "
                          f"use rollout.tp in {_divisors(world_size)}")
    if heads % rtp or (kv % rtp and rtp % kv):
        ok = [d for d in _divisors(world_size) if heads % d == 0 and (kv % d == 0 or d % kv == 0)]
        raise ConfigError(f"rollout.tp={rtp} is incompatible with {heads} heads / {kv} KV heads (vLLM needs heads "
                          f"divisible by TP and KV heads divisible by TP or TP by KV heads): use rollout.tp in {ok}")
    return dp
