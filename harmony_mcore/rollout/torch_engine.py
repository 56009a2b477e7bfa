"""A rollout engine on plain transformers: the CPU default and the reference in tests.

Batched sampling with a KV cache and left padding. Each sample draws its random numbers up front
from its own generator, seeded by (params.seed, request seed, sample index), so a request's samples
do not depend on which other requests share the batch (bitwise on CPU when the prompt lengths in a
batch are equal; with different padding the logits can differ in the last bits, which can rarely
flip a sampled token).
"""

from __future__ import annotations

import inspect
import random
from typing import Any, Iterable, Sequence

import torch

from harmony_mcore.device import current as current_device, empty_cache
from harmony_mcore.rollout.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationResult,
    Request,
    Sample,
    SamplingParams,
    sample_seed,
)


def _build_model(hf_config: dict[str, Any], dtype: torch.dtype, device: str | torch.device | None):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in hf_config.items() if k not in ("model_type", "torch_dtype", "dtype")}
    config = AutoConfig.for_model(hf_config["model_type"], **kwargs)
    # Build directly on the target device in the target dtype (an 8B model never lives in fp32 on host);
    # the default-dtype switch works on every transformers version, unlike its dtype/torch_dtype argument.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device or current_device()):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p; renormalise."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: one token per row, driven by the row's uniform number in [0, 1)."""
    cdf = probs.cumsum(dim=-1)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class TorchEngine:
    """RolloutEngine on a transformers causal LM (see harmony_mcore.rollout.base for the protocol)."""

    def __init__(self, model, tokenizer, *, device: str | torch.device | None = None, max_batch_size: int = 256):
        self.device = torch.device(device or current_device())
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self._weights_awake = True
        self._params = dict(self.model.named_parameters())
        # transformers 5.x renamed `past_key_values` to `cache` (argument and output field).
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @classmethod
    def from_hf_config(cls, hf_config: dict[str, Any], tokenizer, state_dict: dict[str, torch.Tensor] | None = None,
                       *, dtype: torch.dtype = torch.float32, **kwargs) -> "TorchEngine":
        """Build from config.json content; weights random unless `state_dict` (HF names) is given."""
        engine = cls(_build_model(hf_config, dtype, kwargs.get("device")), tokenizer, **kwargs)
        if state_dict is not None:
            engine.load_weights(state_dict.items())
        return engine

    @classmethod
    def from_pretrained(cls, path: str, tokenizer=None, *, dtype: torch.dtype = torch.float32, **kwargs) -> "TorchEngine":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path).to(dtype)
        return cls(model, tokenizer or AutoTokenizer.from_pretrained(path), **kwargs)

    # ---- protocol -------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[GenerationResult]:
        self._require_awake("generate")
        prompts = [self.prompt_ids(r) for r in requests]
        stop_ids = set(params.stop_token_ids) if params.stop_token_ids is not None else self.eos_token_ids()
        base_seed = params.seed if params.seed is not None else random.randrange(1 << 62)
        req_seeds = list(params.request_seeds) if params.request_seeds is not None else list(range(len(prompts)))
        if len(req_seeds) != len(prompts):
            raise ValueError(f"SamplingParams.request_seeds has {len(req_seeds)} entries for {len(prompts)} requests")
        rows = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        results = [GenerationResult(prompt_ids=list(p)) for p in prompts]
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start:start + self.max_batch_size]
            uniforms = torch.stack([
                torch.rand(params.max_tokens, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(sample_seed(base_seed, req_seeds[i], j)))
                for i, j in chunk])
            for (i, _), sample in zip(chunk, self._generate_rows([prompts[i] for i, _ in chunk], uniforms, params, stop_ids)):
                results[i].samples.append(sample)
        return results

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[torch.Tensor]:
        self._require_awake("score")
        out: list[torch.Tensor] = []
        for start in range(0, len(sequences), self.max_batch_size):
            chunk = [list(s) for s in sequences[start:start + self.max_batch_size]]
            width = max(len(s) for s in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, :len(s)] = torch.tensor(s)
                mask[r, :len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
            tok = logp.gather(-1, ids[:, 1:].to(self.device).unsqueeze(-1)).squeeze(-1).cpu()
            out.extend(tok[r, :len(s) - 1] for r, s in enumerate(chunk))
        return out

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors into parameters by HF name; returns how many were loaded."""
        self._require_awake("load_weights")
        count = 0
        for name, tensor in weights:
            param = self._params.get(name)
            if param is None:
                raise KeyError(f"load_weights: {name!r} is not a parameter of {type(self.model).__name__} "
                               "(tied lm_head.weight must be skipped; check the family mapping)")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"load_weights: {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(param.shape)}")
            param.copy_(tensor)
            count += 1
        return count

    def sleep(self, level: int = 1) -> None:
        # Both levels keep the weights on the host: transformers models have no cheap way to drop
        # and re-create parameters while keeping buffers (rotary tables), and there is no KV cache to free.
        if level not in (1, 2):
            raise ValueError(f"sleep level {level}: use 1 or 2")
        if self.device.type == "cuda":
            self.model.to("cpu")
            empty_cache()
        self._weights_awake = False

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        if tags is None or "weights" in tags:
            self.model.to(self.device)
            self._weights_awake = True

    def reset_prefix_cache(self) -> None:
        """Nothing to reset: the KV cache lives only for one generate call."""

    # ---- helpers --------------------------------------------------------------------------------

    def prompt_ids(self, request: Request) -> list[int]:
        if len(request) and isinstance(request[0], dict):
            out = self.tokenizer.apply_chat_template(list(request), add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
        else:
            ids = request
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("empty prompt: a request needs at least one token")
        return ids

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if eos is not None:
                ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return ids

    def _require_awake(self, what: str) -> None:
        if not self._weights_awake:
            raise RuntimeError(f"{what}: the engine is asleep; call wake_up() first")

    @torch.no_grad()
    def _generate_rows(self, prompts: list[list[int]], uniforms: torch.Tensor, params: SamplingParams,
                       stop_ids: set[int]) -> list[Sample]:
        bsz, width = len(prompts), max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((bsz, width), pad, dtype=torch.long)
        mask = torch.zeros(bsz, width, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = getattr(out, self._cache_kw), out.logits[:, -1].float()
        next_pos = positions[:, -1:] + 1

        tokens = torch.zeros(bsz, params.max_tokens, dtype=torch.long)
        logps = torch.zeros(bsz, params.max_tokens, dtype=torch.float64)
        lengths = torch.full((bsz,), params.max_tokens, dtype=torch.long)
        done = torch.zeros(bsz, dtype=torch.bool)
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long)
        for t in range(params.max_tokens):
            logp = torch.log_softmax(logits / params.logprob_temperature, dim=-1)
            if params.greedy:
                tok = logits.argmax(dim=-1)
            else:
                tok = sample_from(top_p_filter(logp.exp(), params.top_p), uniforms[:, t].to(logits.device))
            tokens[:, t] = tok.cpu()
            logps[:, t] = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1).double().cpu()
            hit = torch.isin(tokens[:, t], stop) & ~done
            lengths[hit] = t + 1
            done |= hit
            if bool(done.all()) or t + 1 == params.max_tokens:
                break
            mask = torch.cat([mask, torch.ones(bsz, 1, dtype=mask.dtype, device=mask.device)], dim=-1)
            out = self.model(input_ids=tok.unsqueeze(-1), attention_mask=mask, position_ids=next_pos,
                             use_cache=True, **{self._cache_kw: cache})
            cache, logits = getattr(out, self._cache_kw), out.logits[:, -1].float()
            next_pos = next_pos + 1

        samples = []
        for r in range(bsz):
            n = int(lengths[r])
            toks = tokens[r, :n].tolist()
            samples.append(Sample(token_ids=toks, text=self.tokenizer.decode(toks, skip_special_tokens=True),
                                  logprobs=logps[r, :n].tolist(),
                                  finish_reason=FINISH_STOP if bool(done[r]) else FINISH_LENGTH))
        return samples
