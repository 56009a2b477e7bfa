"""Rollout engines: the protocol (base), transformers on CPU/tests (torch_engine), colocated vLLM (vllm_engine)."""

from __future__ import annotations

import importlib.util
from typing import Any

from harmony_mcore import device
from harmony_mcore.config import ConfigError, RolloutConfig
from harmony_mcore.dtypes import torch_dtype
from harmony_mcore.rollout.base import GenerationResult, RolloutEngine, Sample, SamplingParams

__all__ = ["create_engine", "engine_kind", "GenerationResult", "RolloutEngine", "Sample", "SamplingParams"]

def engine_kind(cfg: RolloutConfig, *, cuda: bool | None = None, vllm_installed: bool | None = None) -> str:
    """'vllm' or 'torch' for rollout.engine (auto = vllm on a GPU, torch on CPU)."""
    cuda = device.on_gpu if cuda is None else cuda
    kind = cfg.engine if cfg.engine != "auto" else ("vllm" if cuda else "torch")
    if vllm_installed is None:
        vllm_installed = importlib.util.find_spec("vllm") is not None
    if kind == "vllm" and not vllm_installed:
        extra = "gpu" if cuda else "cpu"
        raise ConfigError(f"rollout.engine={cfg.engine} needs vLLM, which is not installed: pip install -e '.[{extra}]' "
                          "(vLLM 0.32), or use rollout.engine=torch")
    return kind


def create_engine(cfg: RolloutConfig, *, hf_config: dict[str, Any] | None = None, tokenizer=None,
                  model_path: str | None = None, dtype: str = "bf16", seed: int = 0, max_model_len: int | None = None,
                  load_weights: bool = False, log=print) -> RolloutEngine:
    """The engine of `cfg.engine`: the one place an engine is built (training and evaluation).

    Training (`load_weights=False`): the weights are placeholders until the first bridge sync; the torch
    engine is built from `hf_config` with `tokenizer`, vLLM reads config and tokenizer from `model_path`.
    Evaluation (`load_weights=True`): the weights and tokenizer of the HF directory `model_path` (for vLLM,
    `cfg.vllm_extra` says how: see harmony_mcore.evaluation.load_engine).
    """
    kind = engine_kind(cfg)
    if kind == "torch":
        from harmony_mcore.rollout.torch_engine import TorchEngine

        if load_weights:
            return TorchEngine.from_pretrained(str(model_path), dtype=torch_dtype(dtype))
        return TorchEngine.from_hf_config(hf_config, tokenizer, dtype=torch_dtype(dtype))
    if model_path is None:
        raise ConfigError("rollout.engine=vllm needs an HF model directory (config.json + tokenizer): set model.path")
    from harmony_mcore.rollout.vllm_engine import VllmEngine

    return VllmEngine(cfg, model_path, dtype=dtype, seed=seed,
                      max_model_len=max_model_len or cfg.max_prompt_tokens + cfg.max_response_tokens, log=log)
