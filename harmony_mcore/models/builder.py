"""Build the GPTModel chunks of this rank's pipeline stage (one chunk per virtual stage)."""

from __future__ import annotations

from typing import Any

import torch

from harmony_mcore import device
from harmony_mcore.config import ParallelConfig
from harmony_mcore.models import families


def build_chunks(hf_config: Any, parallel: ParallelConfig, *, dtype: str = "fp32", recompute: str = "none",
                 use_te: bool | None = None, **config_overrides: Any) -> list:
    """GPTModel chunks for the local PP stage: `parallel.vpp` chunks with virtual PP, else one.

    Needs Megatron's parallel state (`harmony_mcore.parallel.init_distributed`). Weights are Megatron's
    random init, every param in `dtype`; on a GPU the chunks are moved to the current device.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_model import GPTModel

    config = families.transformer_config(hf_config, tp=parallel.tp, pp=parallel.pp, vpp=parallel.vpp, dtype=dtype,
                                         sequence_parallel=parallel.sequence_parallel, recompute=recompute,
                                         **config_overrides)
    spec = families.layer_spec(hf_config, use_te=use_te)
    kwargs = families.gpt_model_kwargs(hf_config, tp=parallel.tp)
    chunks = []
    for vp in range(parallel.vpp or 1):
        vp_stage = vp if parallel.vpp else None
        model = GPTModel(config, spec,
                         pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                         post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                         vp_stage=vp_stage, **kwargs)
        if device.on_gpu:
            model.cuda(torch.cuda.current_device())
        # The local spec's norms are created fp32 whatever params_dtype says; Megatron's training loop
        # casts the whole model (Float16Module), and its mixed-precision optimizer and checkpoints expect
        # every param in params_dtype. Cast params only (buffers such as rotary frequencies stay fp32).
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != config.params_dtype:
                p.data = p.data.to(config.params_dtype)
        chunks.append(model)
    return chunks


def wrap_ddp(chunks: list, *, distributed_optimizer: bool = False, grad_reduce_in_fp32: bool = True) -> list:
    """Wrap chunks in Megatron DDP (contiguous main_grad buffers; bucketing only on the first chunk)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=grad_reduce_in_fp32, overlap_grad_reduce=False,
                                               use_distributed_optimizer=distributed_optimizer)
    return [DistributedDataParallel(c.config, ddp_config, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]


def global_name(module, local_name: str) -> str:
    """A chunk's parameter name with its layer number made global (chunks number layers from 0)."""
    parts = local_name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(module.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)
