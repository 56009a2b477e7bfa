"""The Megatron-Core policy: model chunks in Megatron DDP, a frozen reference, log-probs, GRPO step.

SPMD contract: every rank passes the same full batch (rows in the caller's order). Rows are split
across data-parallel ranks, run through Megatron's pipeline schedule in micro-batches, and results
come back on every rank in the caller's row order.

Row layout: `input_ids` [B, T] with `attention_mask` [B, T] marking one contiguous run of real tokens
per row (left-padded prompt + right-padded response is fine). A per-token tensor's value at column t
is about token t: log-probs are log p(token_t | tokens_<t), 0 at a row's first token and at padding.
Inside, each row is shifted to start at column 0 so that a plain causal mask is exact (the same code
path works with Transformer Engine's causal attention) and positions are 0..L-1, as in HF.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from harmony_mcore import device
from harmony_mcore.algo.loss import grpo_view_loss
from harmony_mcore.algo.schedules import lr_at
from harmony_mcore.config import AlgorithmConfig, ParallelConfig
from harmony_mcore.dtypes import torch_dtype
from harmony_mcore.models import families
from harmony_mcore.models.builder import build_chunks, wrap_ddp
from harmony_mcore.parallel.vocab_parallel import vocab_parallel_logprobs


@dataclass
class ViewBatch:
    """One view's rows for the update. Per-token tensors are [B, T], aligned with `input_ids`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # tokens that carry loss (this view's own mask)
    old_logp: torch.Tensor
    advantages: torch.Tensor  # [B]
    ref_logp: torch.Tensor | None = None
    policy_gradient: bool = True  # False: only the KL term (reframe view without augmented reward)


@dataclass
class _Packed:
    """Rows shifted to start at column 0, padded to a common length S and to whole micro-batches."""

    first: torch.Tensor  # [B] column of each row's first real token
    length: torch.Tensor  # [B]
    rows: int  # B, the caller's rows
    width: int  # T, the caller's width
    seq: int  # S
    tensors: dict[str, torch.Tensor]  # name -> [B_pad, S] (or [B_pad] for per-row values)


def _pack(attention_mask: torch.Tensor, per_token: dict[str, torch.Tensor], per_row: dict[str, torch.Tensor],
          *, rows_multiple: int, seq_multiple: int) -> _Packed:
    mask = attention_mask.to(torch.bool)
    B, T = mask.shape
    length = mask.sum(dim=1)
    first = torch.where(length > 0, mask.to(torch.int8).argmax(dim=1), torch.zeros_like(length))
    cols = torch.arange(T)
    contiguous = (mask == ((cols >= first[:, None]) & (cols < (first + length)[:, None]))).all()
    if not contiguous:
        raise ValueError("attention_mask must mark one contiguous run of tokens per row "
                         "(left-pad the prompt, right-pad the response)")
    S = max(int(length.max()) if B else 1, 2)
    S = -(-S // seq_multiple) * seq_multiple
    B_pad = max(-(-B // rows_multiple) * rows_multiple, rows_multiple)
    idx = (first[:, None] + torch.arange(S)[None, :]).clamp(max=T - 1)
    valid = torch.arange(S)[None, :] < length[:, None]
    out = {}
    for name, x in per_token.items():
        packed = torch.where(valid, x.gather(1, idx), torch.zeros((), dtype=x.dtype))
        out[name] = torch.cat([packed, packed.new_zeros(B_pad - B, S)])
    for name, x in per_row.items():
        out[name] = torch.cat([x, x.new_zeros(B_pad - B)])
    out["valid"] = torch.cat([valid, valid.new_zeros(B_pad - B, S)])
    return _Packed(first, length, B, T, S, out)


def _unpack(packed: _Packed, values: torch.Tensor) -> torch.Tensor:
    """[B_pad, S] -> the caller's [B, T] layout (zeros outside each row's tokens)."""
    B, T, S = packed.rows, packed.width, packed.seq
    values = torch.where(packed.tensors["valid"][:B], values[:B], torch.zeros((), dtype=values.dtype))
    idx = (packed.first[:, None] + torch.arange(S)[None, :]).clamp(max=T - 1)
    return values.new_zeros(B, T).scatter_add_(1, idx, values)


class Policy:
    """Trainable policy (`model`: DDP-wrapped chunks of this PP stage) + frozen reference (`reference`).

    `modules` are the plain GPTModel chunks: their `state_dict()`/`named_parameters()` carry Megatron's
    standard names (harmony_mcore.models.families.layer_spec) for the bridge and checkpoints. After
    writing weights into `modules` (e.g. bridge.dist_ckpt.load_model_weights), call `sync_reference()`.
    """

    def __init__(self, hf_config: Any, parallel: ParallelConfig, algorithm: AlgorithmConfig, *,
                 dtype: str = "fp32", total_steps: int = 1, recompute: str = "none",
                 reference: bool = True, use_te: bool | None = None):
        from megatron.core import parallel_state as ps

        cfg = families.hf_dict(hf_config)
        self.hf_config = {**cfg, "architectures": [families.architecture(cfg)]}  # the bridge keys on it
        self.parallel, self.algo, self.total_steps = parallel, algorithm, total_steps
        self.vocab_size = self.hf_config["vocab_size"]
        self.on_gpu = device.on_gpu
        self.dp = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        build = partial(build_chunks, self.hf_config, parallel, dtype=dtype, recompute=recompute, use_te=use_te,
                        calculate_per_token_loss=True)  # our loss is already a global token-mean: no rescaling
        self.model = wrap_ddp(build(), distributed_optimizer=parallel.distributed_optimizer)
        self.modules = [c.module for c in self.model]
        self.reference = build() if reference else None
        if self.reference:
            for chunk in self.reference:
                chunk.requires_grad_(False)
        self.dtype = dtype
        self.optimizer = self._make_optimizer(dtype, parallel.distributed_optimizer)
        self.steps_taken = 0  # optimizer updates made by this object (skipped steps excluded)
        self.sync_reference()

    # ---- weights -------------------------------------------------------------------------------
    @torch.no_grad()
    def sync_reference(self) -> None:
        """Initial weights were loaded into `modules`: copy them into the frozen reference and, before the
        first optimizer step, into the optimizer's fp32 main params (Megatron copies those at construction)."""
        if self.steps_taken == 0:
            self.optimizer.reload_model_params()
        if self.reference is None:
            return
        self._reference_to(device.current())
        for ref, pol in zip(self.reference, self.modules):
            ref.load_state_dict(pol.state_dict())
        self._offload_reference()

    def _reference_to(self, dev: torch.device) -> None:
        for chunk in self.reference or []:
            for p in chunk.parameters():
                if p.device != dev:
                    p.data = p.data.to(dev, non_blocking=True)

    def _offload_reference(self) -> None:
        if self.on_gpu and self.parallel.offload_reference:
            self._reference_to(torch.device("cpu"))

    # ---- schedule ------------------------------------------------------------------------------
    def _micro_batch_size(self, rows: int) -> int:
        return max(1, min(self.parallel.micro_batch_size, -(-rows // self.dp)))

    def _rows_multiple(self, mbs: int) -> int:
        # The interleaved (virtual PP) schedule wants whole groups of PP micro-batches.
        return self.dp * mbs * (self.parallel.pp if self.parallel.vpp else 1)

    def _seq_multiple(self) -> int:
        # Sequence parallelism splits the sequence over TP ranks.
        return self.parallel.tp if self.parallel.sequence_parallel else 1

    def _run(self, chunks: list, packed: _Packed, mbs: int, loss_fn, forward_only: bool) -> list[dict]:
        """Run this DP rank's share of `packed` through the pipeline; returns the last stage's outputs."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        per_rank = packed.tensors["ids"].shape[0] // self.dp
        lo = self.dp_rank * per_rank
        dev = device.current()
        micro = [{k: v[lo + i: lo + i + mbs].to(dev) for k, v in packed.tensors.items()}
                 for i in range(0, per_rank, mbs)]
        S = packed.seq
        positions = torch.arange(S, device=dev)

        def step(data_iterator, model):
            mb = next(data_iterator)
            ids = mb["ids"]
            out = model(ids, positions.expand(ids.shape[0], S), None)
            return out, partial(loss_fn, mb)

        iterators = [iter(micro) for _ in chunks]
        return get_forward_backward_func()(
            forward_step_func=step, data_iterator=iterators if len(chunks) > 1 else iterators[0], model=chunks,
            num_microbatches=len(micro), seq_length=S, micro_batch_size=mbs, forward_only=forward_only)

    def _logprobs_of(self, logits: torch.Tensor, ids: torch.Tensor, temperature: float, stat: str | None):
        """[b, S] log-probs (and statistic) aligned with ids (column 0 = 0) from logits [b, S, V_local]."""
        logp, value = vocab_parallel_logprobs(logits[:, :-1], ids[:, 1:], vocab_size=self.vocab_size,
                                              temperature=temperature, stat=stat)
        pad = logp.new_zeros(logp.shape[0], 1)
        return torch.cat([pad, logp], 1), (torch.cat([pad, value], 1) if value is not None else None)

    # ---- log-probs -----------------------------------------------------------------------------
    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, temperature: float = 1.0,
                 reference: bool = False, stat: str | None = None):
        """Per-token log-probs [B, T] of the policy or the reference, and the [B, T] statistic `stat` of
        `harmony_mcore.parallel.vocab_parallel.STATS` (entropy, self-certainty), else None.

        The statistic at column t is that of the distribution that produced token t (logits at t-1).
        Available on every rank, in the caller's row order, float32 on CPU.
        """
        from megatron.core import parallel_state as ps

        if reference and self.reference is None:
            raise ValueError("this Policy was built with reference=False")
        mbs = self._micro_batch_size(input_ids.shape[0])
        packed = _pack(attention_mask, {"ids": input_ids.long()}, {}, rows_multiple=self._rows_multiple(mbs),
                       seq_multiple=self._seq_multiple())

        def loss_fn(mb, logits):
            logp, value = self._logprobs_of(logits, mb["ids"], temperature, stat)
            out = {"logp": logp}
            if value is not None:
                out["stat"] = value
            return logits.new_zeros(()), torch.tensor(1, dtype=torch.int), out

        chunks = self.reference if reference else self.model
        if reference:
            self._reference_to(device.current())
        outputs = self._run(chunks, packed, mbs, loss_fn, forward_only=True)
        if reference:
            self._offload_reference()
        names = ["logp"] + (["stat"] if stat else [])
        B_pad = packed.tensors["ids"].shape[0]
        result = []
        for name in names:
            full = torch.zeros(B_pad, packed.seq, device=device.current())
            if ps.is_pipeline_last_stage(ignore_virtual=True):
                local = torch.cat([o[name] for o in outputs])
                parts = list(full.chunk(self.dp))  # views into `full`, one per DP rank
                if self.dp > 1:
                    dist.all_gather(parts, local.contiguous(), group=ps.get_data_parallel_group())
                else:
                    full.copy_(local)
            if ps.get_pipeline_model_parallel_world_size() > 1:
                dist.broadcast(full, src=ps.get_pipeline_model_parallel_last_rank(),
                               group=ps.get_pipeline_model_parallel_group())
            result.append(_unpack(packed, full.cpu()))
        return result[0], (result[1] if stat else None)

    # ---- training ------------------------------------------------------------------------------
    def _make_optimizer(self, dtype: str, distributed: bool):
        """Megatron's optimizer on every platform: Adam, fp32 main params for bf16/fp16, clipping to
        algorithm.grad_clip, optionally distributed over DP. Megatron's grouping gives biases and 1-D params
        (norms) wd_mult 0; `_schedule` applies it."""
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from harmony_mcore.patches.megatron import torch_adam_fallback

        a = self.algo
        torch_adam_fallback()
        cfg = OptimizerConfig(optimizer="adam", lr=a.lr, min_lr=0.0, weight_decay=a.weight_decay,
                              adam_beta1=a.betas[0], adam_beta2=a.betas[1], adam_eps=1e-8, clip_grad=a.grad_clip,
                              bf16=dtype == "bf16", fp16=dtype == "fp16", params_dtype=torch_dtype(dtype),
                              use_distributed_optimizer=distributed,
                              loss_scale=None if dtype == "fp16" else 1.0,  # fp16: dynamic loss scaling,
                              initial_loss_scale=2.0**16)  # from 2^16, not Megatron's 2^32: fewer skipped steps
        optimizer = get_megatron_optimizer(cfg, self.model)
        if dtype == "fp16":
            # The schedule multiplies each micro-batch loss by the current loss scale before backward;
            # the optimizer divides the gradients by it (and skips + lowers it on overflow).
            for chunk in self.model:
                chunk.config.grad_scale_func = optimizer.scale_loss
        return optimizer

    def _schedule(self, step: int) -> float:
        """Set every param group's lr and weight decay for optimizer step `step` the way Megatron's
        OptimizerParamScheduler.step does (the group's max_lr/min_lr; weight_decay x wd_mult), with the
        project's warmup + cosine `lr_at` (a pure function of the step: resume needs no scheduler state).
        Returns the base lr."""
        a = self.algo

        def lr(base: float, low: float) -> float:
            return lr_at(step, base_lr=base, min_lr=low, total_steps=self.total_steps, warmup_ratio=a.warmup_ratio,
                         warmup_init=a.lr_warmup_init)

        for g in self.optimizer.param_groups:
            g["lr"] = lr(g.get("max_lr", a.lr), g.get("min_lr", 0.0))
            g["weight_decay"] = a.weight_decay * g.get("wd_mult", 1.0)
        return lr(a.lr, 0.0)

    def _grads_nonfinite(self) -> bool:
        """Whether any rank's grad buffer holds inf/nan. Asked for fp32 only: Megatron's FP32Optimizer (fp32
        without the distributed optimizer) has no such check, while its bf16/fp16 optimizers check before every
        step through their grad scaler (constant 1.0 for bf16; dynamic for fp16, which also lowers the scale)
        and skip the step themselves."""
        finite = [torch.isfinite(p.main_grad).all() for c in self.model for p in c.parameters() if p.requires_grad]
        bad = (~torch.stack(finite).all()).float()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def _update(self) -> tuple[float, bool]:
        """Clip and apply the gradients in the DDP buffers unless one is non-finite: (grad norm, skipped)."""
        if self.dtype == "fp32" and self._grads_nonfinite():
            return float("nan"), True
        ok, norm, _ = self.optimizer.step()  # Megatron's: clips to algorithm.grad_clip itself
        return (norm if norm is not None and ok else float("nan")), not ok

    def train_step(self, views: list[ViewBatch], step: int, *, temperature: float = 1.0) -> dict[str, float]:
        """One optimizer step on the sum of the views' GRPO losses (each a global token-mean over its view).

        Returns metrics (same on every rank): loss, pg_loss, kl per view (`view{i}/...`), grad_norm,
        lr, skipped (1.0 when the grad norm was non-finite and no update was made).
        """
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import finalize_model_grads

        a = self.algo
        for c in self.model:
            c.zero_grad_buffer()
        self.optimizer.zero_grad()
        metrics = torch.zeros(len(views), 3, dtype=torch.float64, device=device.current())
        for v, view in enumerate(views):
            ref_used = view.ref_logp is not None and a.kl_coef > 0
            per_token = {"ids": view.input_ids.long(), "mask": (view.response_mask * view.attention_mask).float(),
                         "old": view.old_logp.float()}
            if ref_used:
                per_token["ref"] = view.ref_logp.float()
            mbs = self._micro_batch_size(view.input_ids.shape[0])
            packed = _pack(view.attention_mask, per_token, {"adv": view.advantages.float()},
                           rows_multiple=self._rows_multiple(mbs), seq_multiple=self._seq_multiple())
            packed.tensors["mask"][:, 0] = 0.0  # a row's first token has no log-prob
            denom = packed.tensors["mask"].sum().item()

            def loss_fn(mb, logits, view=view, ref_used=ref_used, denom=denom, v=v):
                logp, _ = self._logprobs_of(logits, mb["ids"], temperature, None)
                loss, parts = grpo_view_loss(
                    logp, mb["old"], mb["ref"] if ref_used else None, mb["adv"], mb["mask"], kl_coef=a.kl_coef,
                    clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip, kl_clamp=a.kl_clamp,
                    denom=denom, policy_gradient=view.policy_gradient)
                metrics[v] += torch.stack([loss.detach(), parts["pg_loss"], parts["kl"]]).double()
                # Keep the graph even when the view has no term (every rank must run backward).
                return loss + 0.0 * logp.sum(), torch.tensor(1, dtype=torch.int), {}

            self._run(self.model, packed, mbs, loss_fn, forward_only=False)
        finalize_model_grads(self.model)

        lr = self._schedule(step)
        grad_norm, skipped = self._update()
        self.steps_taken += int(not skipped)
        dist.all_reduce(metrics, group=ps.get_data_parallel_group())
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.all_reduce(metrics, group=ps.get_pipeline_model_parallel_group())
        out = {"grad_norm": float(grad_norm), "lr": lr, "skipped": float(skipped)}
        for v in range(len(views)):
            loss, pg, kl = metrics[v].tolist()
            out.update({f"view{v}/loss": loss, f"view{v}/pg_loss": pg, f"view{v}/kl": kl})
        out["loss"] = float(metrics[:, 0].sum())
        return out

