"""Megatron-Core dist-checkpoint (torch_dist format) streaming I/O, without building a model.

A torch_dist checkpoint is a torch.distributed.checkpoint (DCP) directory (`.metadata` +
`__*.distcp`) plus megatron's `metadata.json` and `common.pt`. Tensor keys are megatron's sharded
keys, e.g. `decoder.layers.mlp.linear_fc1.weight`, whose layers are stacked along a leading axis
of size num_layers; each stored chunk is one (layer, TP shard) piece. `GPTModel.sharded_state_dict()`
of any TP/PP asks for exactly these keys, and DCP reads the overlapping chunks (reshard at load).

- `write_checkpoint`: a planned list of chunks whose data is produced on demand, one at a time,
  while DCP writes them (a custom SavePlanner resolves each chunk only when it is written).
- `CheckpointReader`: reads any sub-block of a stored tensor (e.g. one layer).
- `load_model_weights`: load such a checkpoint into live megatron model chunks (trainer, tests).

Both first route PyTorch's (and Megatron's) checkpoint reading through harmony_mcore.safe_pickle,
so a crafted `.metadata` is refused instead of run.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.default_planner import create_default_global_save_plan
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import (LoadPlan, LoadPlanner, SavePlan, SavePlanner,
                                                  TensorWriteData, WriteItem, WriteItemType)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from harmony_mcore import safe_pickle
from harmony_mcore.patches.torch import restricted_checkpoint_reader

CONFIG_NAME = "metadata.json"  # megatron's marker of a dist checkpoint
COMMON_NAME = "common.pt"
TORCH_DIST = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
              "common_backend": "torch", "common_backend_version": 1}


class CheckpointError(Exception):
    """A checkpoint that cannot be read (unreadable, incomplete, foreign) or written (the previous ones
    are then intact), with the path in the message."""


@dataclass(frozen=True)
class Chunk:
    key: str
    global_shape: tuple[int, ...]
    dtype: torch.dtype
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


class _StreamingSavePlanner(SavePlanner):
    """Plans the given chunks and produces each one's data only when DCP writes it.

    While DCP serialises one chunk, a worker thread already produces the chunk DCP will ask for
    next, so file reads and tensor building overlap the writes (the converters are CPU-bound, and
    these are system calls on the other core). DCP writes a single file's items in plan order,
    which `_next` assumes; if a DCP version asks in another order, prefetching just stops helping.
    One worker runs every `produce` call, in turn, so `produce` needs no locking, and at most one
    chunk is produced ahead, so memory grows by one chunk at most.
    """

    def __init__(self, chunks: Sequence[Chunk], produce: Callable[[Chunk], torch.Tensor]):
        self._chunks = {(c.key, c.offsets): c for c in chunks}
        self._produce = produce
        order = list(self._chunks)
        self._next = dict(zip(order, order[1:]))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="produce")
        self._ahead: dict[tuple, Future] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def set_up_planner(self, state_dict: Any, storage_meta: Any = None, is_coordinator: bool = False) -> None:
        pass  # the plan comes from the chunk list, not from a state dict

    def create_local_plan(self) -> SavePlan:
        items = [WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                           tensor_data=TensorWriteData(
                               chunk=ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)),
                               properties=TensorProperties(dtype=c.dtype), size=torch.Size(c.global_shape)))
                 for c in self._chunks.values()]
        return SavePlan(items)

    def create_global_plan(self, all_plans: list[SavePlan]):
        return create_default_global_save_plan(all_plans)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        key = (write_item.index.fqn, tuple(write_item.index.offset))
        chunk = self._chunks[key]
        pending = self._ahead.pop(key, None) or self._pool.submit(self._produce, chunk)
        nxt = self._next.get(key)
        if nxt is not None and not self._ahead:  # a stale guess stays queued until DCP asks for it
            self._ahead[nxt] = self._pool.submit(self._produce, self._chunks[nxt])
        data = pending.result()
        if tuple(data.shape) != chunk.sizes or data.dtype != chunk.dtype:
            raise RuntimeError(f"{chunk.key}@{chunk.offsets}: produced {data.dtype} {tuple(data.shape)}, "
                               f"planned {chunk.dtype} {chunk.sizes}")
        return data


@contextlib.contextmanager
def _no_zip_crc() -> Iterator[None]:
    """Skip torch.save's CRC32 of every item (a third of the CPU time of a save; torch.load ignores it)."""
    cfg = getattr(getattr(getattr(torch, "utils", None), "serialization", None), "config", None)
    save_cfg = getattr(cfg, "save", None)
    if save_cfg is None or not hasattr(save_cfg, "compute_crc32"):
        yield
        return
    old, save_cfg.compute_crc32 = save_cfg.compute_crc32, False
    try:
        yield
    finally:
        save_cfg.compute_crc32 = old


def write_checkpoint(out_dir: str | os.PathLike, chunks: Sequence[Chunk],
                     produce: Callable[[Chunk], torch.Tensor]) -> None:
    """Write a torch_dist checkpoint into the (existing, empty) `out_dir`; single process."""
    out = Path(out_dir)
    writer = FileSystemWriter(str(out), single_file_per_rank=True, sync_files=True, thread_count=1)
    planner = _StreamingSavePlanner(chunks, produce)
    with warnings.catch_warnings(), _no_zip_crc():  # "saving in a single process" is what we mean
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            dcp_save({}, storage_writer=writer, planner=planner, no_dist=True)
        except CheckpointException as e:  # a BaseException wrapping ours: re-raise the original
            raise next(iter(e.failures.values()))[0] from None
        finally:
            planner.close()
    torch.save({}, out / COMMON_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(TORCH_DIST))


class _SliceLoadPlanner(LoadPlanner):
    """Reads the planned items into one target tensor (the block asked for)."""

    def __init__(self, target: torch.Tensor, items):
        self.target, self.items = target, items

    def set_up_planner(self, *args: Any, **kwargs: Any) -> None:
        pass

    def create_local_plan(self) -> LoadPlan:
        return LoadPlan(self.items)

    def create_global_plan(self, global_plan):
        return global_plan

    def finish_plan(self, new_plan: LoadPlan) -> LoadPlan:
        return new_plan

    def load_bytes(self, read_item, value) -> None:
        raise RuntimeError("unexpected bytes item while reading a tensor")

    def resolve_tensor(self, read_item) -> torch.Tensor:
        t = self.target
        for dim, (off, n) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            t = t.narrow(dim, off, n)
        return t

    def commit_tensor(self, read_item, tensor) -> None:
        pass


def is_dist_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


class CheckpointReader:
    """Random access to the tensors of a torch_dist checkpoint, one block at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_dist_checkpoint(self.path):
            raise CheckpointError(f"{self.path}: not a Megatron-Core distributed checkpoint (no {CONFIG_NAME})")
        try:
            backend = json.loads((self.path / CONFIG_NAME).read_text()).get("sharded_backend")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.path / CONFIG_NAME}: corrupt ({e})") from None
        if backend != "torch_dist":
            raise CheckpointError(f"{self.path}: sharded_backend {backend!r}; only torch_dist checkpoints "
                                  "are supported (save with megatron's default torch_dist format)")
        restricted_checkpoint_reader()
        self._reader = FileSystemReader(str(self.path))
        try:
            metadata = self._reader.read_metadata()
        except safe_pickle.UnsafeCheckpointError as e:
            raise CheckpointError(f"{self.path / '.metadata'}: {e}") from None
        except Exception as e:  # unpickling a damaged file raises many kinds of errors
            raise CheckpointError(f"{self.path / '.metadata'}: missing, truncated or corrupt ({e})") from None
        if not isinstance(getattr(metadata, "state_dict_metadata", None), dict):
            raise CheckpointError(f"{self.path / '.metadata'}: not torch.distributed.checkpoint metadata (corrupt?)")
        self._reader.set_up_storage_reader(metadata, True)
        self._storage = metadata.storage_data
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        self.other_keys = sorted(set(metadata.state_dict_metadata) - set(self.tensors))

    def missing_data(self) -> list[str]:
        """What the metadata promises but the folder lacks: missing or truncated data files, common.pt."""
        need: dict[str, int] = {}
        for info in (self._storage or {}).values():
            name = str(info.relative_path)
            need[name] = max(need.get(name, 0), int(info.offset) + int(info.length))
        problems = [f"{name} is missing" if not (self.path / name).is_file() else
                    f"{name} is truncated ({(self.path / name).stat().st_size} of {size} bytes)"
                    for name, size in sorted(need.items())
                    if not (self.path / name).is_file() or (self.path / name).stat().st_size < size]
        if not (self.path / COMMON_NAME).is_file():
            problems.append(f"{COMMON_NAME} is missing")
        return problems

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].size)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def read(self, key: str, offsets: Sequence[int] | None = None, sizes: Sequence[int] | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """The block [offsets, offsets + sizes) of tensor `key` (all of it by default), into `out`
        if given (a reused buffer: a fresh one costs a page fault per 4 KiB, as much CPU as the read)."""
        md = self.tensors[key]
        offsets = tuple(offsets) if offsets is not None else (0,) * len(md.size)
        sizes = tuple(sizes) if sizes is not None else tuple(md.size)
        if out is not None and (tuple(out.shape) != sizes or out.dtype != md.properties.dtype):
            raise ValueError(f"out is {out.dtype} {tuple(out.shape)}; {key} block is {md.properties.dtype} {sizes}")
        target = torch.empty(sizes, dtype=md.properties.dtype) if out is None else out
        want = ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))
        items = create_read_items_for_chunk_list(key, md, [want])
        covered = sum(int(torch.Size(it.lengths).numel()) for it in items)
        if covered != target.numel():
            raise CheckpointError(f"{self.path}: {key} block {offsets}+{sizes} is not fully stored "
                                  f"({covered} of {target.numel()} elements); the checkpoint is incomplete")
        planner = _SliceLoadPlanner(target, items)
        plan = self._reader.prepare_local_plan(LoadPlan(items))
        (plan,) = self._reader.prepare_global_plan([plan])
        try:
            self._reader.read_data(plan, planner).wait()
        except Exception as e:  # torch.load / short reads of a damaged data file
            raise CheckpointError(f"{self.path}: data for {key} is truncated or corrupt ({type(e).__name__}: "
                                  f"{e})") from None
        return target


def load_model_weights(model_chunks: Sequence[torch.nn.Module], path: str | os.PathLike) -> None:
    """Load a converted (or model-only) torch_dist checkpoint into megatron model chunks, any TP/PP.

    TE modules' `_extra_state` (FP8 bookkeeping) is not in converted checkpoints and keeps its
    initial value; every other parameter must be loaded, or this raises.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    stored = CheckpointReader(path)  # refuses unsafe metadata before megatron reads it (guarded too)
    damaged = stored.missing_data()
    if damaged:
        raise CheckpointError(f"{path}: incomplete checkpoint: {'; '.join(damaged[:3])}")
    stored_objects = {k.split("/shard_")[0] for k in stored.other_keys}
    for model in model_chunks:
        sharded = model.sharded_state_dict()
        sharded = {k: v for k, v in sharded.items()
                   if not (isinstance(v, ShardedObject) and v.key not in stored_objects)}
        missing_keys = sorted({v.key for v in sharded.values()
                               if not isinstance(v, ShardedObject) and hasattr(v, "key")
                               and v.key not in stored.tensors})
        if missing_keys:
            raise CheckpointError(f"{path}: checkpoint lacks {missing_keys[:5]} (built for another model "
                                  "family or config?)")
        try:
            loaded = dist_checkpointing.load(sharded, str(path))
        except Exception as e:  # damaged data files fail in many ways inside torch/megatron
            raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:300]}); the checkpoint is damaged") from None
        result = model.load_state_dict(loaded, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{path}: loading left {missing[:5]} unset and {result.unexpected_keys[:5]} "
                                  "unused")
