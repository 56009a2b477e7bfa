"""Per-step weight export: live Megatron TP/PP shards -> full Hugging Face tensors -> rollout engine.

The plan is computed once per topology (one collective over the PP group): for every Megatron
parameter its global name, owning PP stage and model chunk, TP layout (from the family mapping),
and for every HF tensor it becomes: name, shape, dtype and bucket. Each step then streams the plan:

    owner stage: all-gather the shards over TP, merge by layout  (mapping.tp_merge)
    PP group:    broadcast the merged tensor from the owner stage
    every rank:  rename/split to HF (mapping.mcore_to_hf), cast to the rollout dtype, add to the
                 current bucket; a full bucket is yielded to `engine.load_weights`

Every rank ends up with every HF tensor (each rank hosts an engine, or a vLLM TP worker that slices
full tensors itself); data-parallel replicas work in parallel, without talking to each other.
Buckets are logical (lists of tensors of at most `bucket_bytes`, or one larger tensor alone): the
engine loads in-process, so there is nothing to pack for IPC; they bound the memory held at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from harmony_mcore import device
from harmony_mcore.bridge.mapping import COLUMN, GATE_UP, REPLICATED, ROW, VOCAB, get_mapping, shift_layer, strip_wrappers


class SyncError(RuntimeError):
    """The rollout engine's weights disagree with the trainer's after a sync."""


@dataclass(frozen=True)
class HFTensor:
    name: str
    shape: tuple[int, ...]
    bucket: int


@dataclass(frozen=True)
class PlanEntry:
    mcore_name: str  # global layer numbers, no wrapper prefixes
    local_name: str  # name inside the owner's chunk (local layer numbers)
    chunk: int  # virtual-pipeline chunk on the owner stage
    owner_stage: int
    layout: str  # TP layout from the mapping
    shard_shape: tuple[int, ...]
    full_shape: tuple[int, ...]
    dtype: torch.dtype  # training dtype
    hf: tuple[HFTensor, ...]


@dataclass
class ExportPlan:
    entries: list[PlanEntry]
    num_buckets: int
    rollout_dtype: torch.dtype
    bucket_bytes: int
    tp: int
    pp: int

    @property
    def hf_tensors(self) -> list[HFTensor]:
        return [h for e in self.entries for h in e.hf]

    def total_bytes(self) -> int:
        size = torch.empty(0, dtype=self.rollout_dtype).element_size()
        return sum(_numel(h.shape) * size for h in self.hf_tensors)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def assign_buckets(sizes: Sequence[int], bucket_bytes: int) -> list[int]:
    """Greedy, order-preserving bucket index per tensor; a tensor over the limit gets a bucket alone."""
    buckets, current, used = [], 0, 0
    for nbytes in sizes:
        if used and used + nbytes > bucket_bytes:
            current, used = current + 1, 0
        buckets.append(current)
        used += nbytes
    return buckets


def _unwrap(chunk):
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _layer_offset(model) -> int:
    """Global index of this chunk's first transformer layer (megatron stores 1-based global numbers)."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    return layers[0].layer_number - 1 if layers is not None and len(layers) else 0


def _full_shape(layout: str, shard: tuple[int, ...], tp: int) -> tuple[int, ...]:
    if layout == REPLICATED or tp == 1:
        return shard
    if layout == ROW:
        return (shard[0], shard[1] * tp) + shard[2:]
    assert layout in (COLUMN, GATE_UP, VOCAB), layout
    return (shard[0] * tp,) + shard[1:]


def build_plan(chunks: Sequence[Any], hf_config: Any, *, rollout_dtype: torch.dtype, bucket_bytes: int) -> ExportPlan:
    """The export plan for this rank's topology (collective over the PP group; call on every rank)."""
    from megatron.core import parallel_state as ps

    mapping = get_mapping(hf_config)
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    mapping.check_tp(tp)
    stage = ps.get_pipeline_model_parallel_rank()
    local = []
    for c, chunk in enumerate(chunks):
        model = _unwrap(chunk)
        offset = _layer_offset(model)
        for name, param in model.named_parameters():
            name = strip_wrappers(name)
            global_name = shift_layer(name, offset)
            if mapping.tied and global_name == "output_layer.weight":
                continue  # the last stage's copy of the tied embedding: never exported
            local.append((global_name, name, c, stage, tuple(param.shape), param.dtype))
    manifests: list[list] = [None] * pp  # type: ignore[list-item]
    if pp > 1:
        dist.all_gather_object(manifests, local, group=ps.get_pipeline_model_parallel_group())
    else:
        manifests = [local]

    pending = []  # (PlanEntry fields, [(HF name, HF shape)])
    for global_name, name, c, owner, shard, dtype in (m for man in manifests for m in man):
        layout = mapping.tp_layout(global_name)
        full = _full_shape(layout, shard, tp)
        expected = tuple(mapping.mcore_shape(global_name, padded_vocab=full[0] if layout == VOCAB else None))
        if full != expected:
            raise ValueError(f"{global_name}: TP-merged shape {full} but config.json implies {expected}; "
                             "the model was built from another config than the one given to the bridge")
        fields = dict(mcore_name=global_name, local_name=name, chunk=c, owner_stage=owner, layout=layout,
                      shard_shape=shard, full_shape=full, dtype=dtype)
        pending.append((fields, [(n, tuple(mapping.hf_shapes[n])) for n in mapping.hf_sources(global_name)]))

    exported = [n for _, hf in pending for n, _ in hf]
    missing = set(mapping.hf_shapes) - set(exported)
    if missing or len(exported) != len(set(exported)):
        raise ValueError(f"export plan does not cover the HF model exactly once: missing {sorted(missing)[:5]}, "
                         f"duplicates {sorted({n for n in exported if exported.count(n) > 1})[:5]}")
    size = torch.empty(0, dtype=rollout_dtype).element_size()
    buckets = assign_buckets([_numel(shape) * size for _, hf in pending for _, shape in hf], bucket_bytes)
    it = iter(buckets)
    entries = [PlanEntry(**fields, hf=tuple(HFTensor(n, shape, next(it)) for n, shape in hf)) for fields, hf in pending]
    return ExportPlan(entries, (buckets[-1] + 1) if buckets else 0, rollout_dtype, bucket_bytes, tp, pp)


def make_params_current(chunks: Sequence[Any]) -> None:
    """With the distributed optimizer and overlapped param gather, updated params reach the model
    buffers only in the next forward's pre-hook: force the all-gather before exporting."""
    for chunk in chunks:
        ddp_config = getattr(chunk, "ddp_config", None)
        if ddp_config is not None and ddp_config.use_distributed_optimizer and ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)


class WeightExporter:
    """Streams the policy's weights as HF tensors, bucket by bucket (see module docstring)."""

    def __init__(self, chunks: Sequence[Any], hf_config: Any, *, rollout_dtype: torch.dtype = torch.bfloat16,
                 bucket_bytes: int = 512 << 20):
        self.chunks = list(chunks)
        self.mapping = get_mapping(hf_config)
        self.plan = build_plan(self.chunks, hf_config, rollout_dtype=rollout_dtype, bucket_bytes=bucket_bytes)
        self._params = [dict((strip_wrappers(n), p) for n, p in _unwrap(c).named_parameters()) for c in self.chunks]

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Yield lists of (HF name, full tensor in the rollout dtype); collective: every rank iterates."""
        from megatron.core import parallel_state as ps

        make_params_current(self.chunks)
        plan, stage = self.plan, ps.get_pipeline_model_parallel_rank()
        tp_group = ps.get_tensor_model_parallel_group()
        pp_group = ps.get_pipeline_model_parallel_group() if plan.pp > 1 else None
        bucket: list[tuple[str, torch.Tensor]] = []
        current = 0
        for entry in plan.entries:
            full = self._gather(entry, stage, tp_group, pp_group)
            pieces = self.mapping.mcore_to_hf(entry.mcore_name, full)
            for (name, tensor), spec in zip(pieces, entry.hf):
                if spec.bucket != current:
                    yield bucket
                    bucket, current = [], spec.bucket
                bucket.append((name, tensor.to(plan.rollout_dtype)))
        if bucket:
            yield bucket

    @torch.no_grad()
    def _gather(self, entry: PlanEntry, stage: int, tp_group, pp_group) -> torch.Tensor:
        if stage == entry.owner_stage:
            local = self._params[entry.chunk][entry.local_name].detach()
            if self.plan.tp > 1 and entry.layout != REPLICATED:
                shards = [torch.empty_like(local) for _ in range(self.plan.tp)]
                dist.all_gather(shards, local.contiguous(), group=tp_group)
                full = self.mapping.tp_merge(entry.mcore_name, shards)
            else:
                full = local
        else:
            dev = next(iter(self._params[0].values())).device
            full = torch.empty(entry.full_shape, dtype=entry.dtype, device=dev)
        if pp_group is not None:
            full = full.contiguous()
            dist.broadcast(full, src=dist.get_global_rank(pp_group, entry.owner_stage), group=pp_group)
        return full

    def sync(self, engine) -> dict[str, float]:
        """Push the current weights into `engine` (wake weights, load, wake KV cache, reset prefix cache).

        Returns phase timings in seconds: export (gather/merge/convert), load, wake.
        """
        t0 = synced_time()
        engine.wake_up(["weights"])
        t1 = synced_time()
        export_s = 0.0

        def timed() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal export_s
            start = synced_time()
            for bucket in self.buckets():
                export_s += synced_time() - start
                yield from bucket
                start = synced_time()

        engine.load_weights(timed())
        t2 = synced_time()
        engine.wake_up(["kv_cache"])
        engine.reset_prefix_cache()
        t3 = synced_time()
        return {"sync/export_s": export_s, "sync/load_s": (t2 - t1) - export_s, "sync/wake_s": (t1 - t0) + (t3 - t2),
                "sync/total_s": t3 - t0, "sync/bytes": float(self.plan.total_bytes())}


def policy_scorer(policy, temperature: float = 1.0) -> Callable[[list[list[int]]], list[torch.Tensor]]:
    """`trainer_logprobs` for check_sync from a harmony_mcore.policy.Policy (collective, like Policy.logprobs)."""
    def score(seqs: list[list[int]]) -> list[torch.Tensor]:
        ids = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        logp, _ = policy.logprobs(ids, mask, temperature=temperature)
        return [logp[r, 1:len(s)] for r, s in enumerate(seqs)]  # column t holds log p(token t | tokens < t)
    return score


def synced_time() -> float:
    """Wall time after the GPU's queued work (timings of asynchronous kernels would be meaningless)."""
    device.synchronize()
    return time.perf_counter()


def check_sync(engine, trainer_logprobs: Callable[[list[list[int]]], list[torch.Tensor]],
               sequences: Sequence[Sequence[int]], tolerance: float) -> float:
    """Max |engine - trainer| per-token log-prob (temperature 1) on `sequences`; raise SyncError above tolerance.

    `trainer_logprobs(seqs)` returns, per sequence, log p(seq[t+1] | seq[:t+1]) from the policy
    (e.g. Policy.logprobs at temperature 1). Collective when that function is.
    """
    seqs = [list(s) for s in sequences]
    ours = trainer_logprobs(seqs)
    theirs = engine.score(seqs, 1.0)
    diff = max(float((a.float().cpu() - b.float().cpu()).abs().max()) for a, b in zip(ours, theirs))
    if not diff <= tolerance:
        raise SyncError(f"engine log-probs differ from the trainer's by {diff:.4g} > rollout.logprob_check_tolerance="
                        f"{tolerance} after weight sync: the engine holds stale or garbled weights (check the "
                        "mapping for this model family, the rollout dtype, and that sync ran after the optimizer step)")
    return diff
