"""Streaming safetensors reading and writing, one tensor at a time.

The `safetensors` package maps whole files into memory (mmap): every page it touches counts as
resident memory, so reading an 8B checkpoint through it grows RSS to the model size. Here tensors
are read with plain file reads into a fresh tensor, and shards are written header-first then
tensor by tensor, so converting needs memory for one tensor, not one shard or one model.
File format (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a
JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then data.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A missing, truncated or corrupt safetensors file, with the path in the message."""


@dataclass(frozen=True)
class TensorInfo:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 * 2**20):
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise SafetensorsError(f"{path}: truncated or corrupt safetensors file (bad header: {e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[meta["dtype"]]
            begin, end = (int(x) for x in meta["data_offsets"])
            shape = tuple(int(s) for s in meta["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: corrupt safetensors header entry for {name!r}: {str(meta)[:200]}") from None
        numel = 1
        for s in shape:
            numel *= s
        if begin < 0 or min(shape, default=0) < 0 or end - begin != numel * dtype.itemsize:
            raise SafetensorsError(f"{path}: corrupt entry {name!r}: {end - begin} bytes for shape {shape}")
        if 8 + n + end > size:
            raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, tensor {name!r} "
                                   f"ends at {8 + n + end}); re-download or re-export it")
        out[name] = TensorInfo(path, dtype, shape, 8 + n + begin, end - begin)
    spans = sorted((info.start, info.start + info.nbytes, name) for name, info in out.items() if info.nbytes)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:  # two tensors sharing bytes: a crafted or corrupt file
            raise SafetensorsError(f"{path}: corrupt safetensors header: tensors {a!r} and {b!r} overlap")
    return out


class SafetensorsReader:
    """All tensors of an HF model directory (one file or shards with an index), read lazily."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = Path(model_dir)
        index = self.dir / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
                raise SafetensorsError(f"{index}: corrupt index ({type(e).__name__}: {e})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise SafetensorsError(f"{index}: corrupt index (weight_map must map tensor names to file names)")
            files = sorted(set(weight_map.values()))
            outside = [f for f in files if Path(f).name != f or f in ("", ".", "..")]
            if outside:  # e.g. ../outside.safetensors: never read outside the model folder
                raise SafetensorsError(f"{index}: weight_map names files outside the model folder: {outside[:3]}")
        elif (self.dir / SINGLE_NAME).exists():
            weight_map, files = None, [SINGLE_NAME]
        else:
            other = [p.name for p in self.dir.glob("*.bin")] + [p.name for p in self.dir.glob("*.pt*")]
            hint = (f" (found {', '.join(sorted(other))}: re-save with "
                    "save_pretrained(..., safe_serialization=True))") if other else ""
            raise SafetensorsError(f"{self.dir}: no {SINGLE_NAME} or {INDEX_NAME}{hint}")
        self.tensors: dict[str, TensorInfo] = {}
        for fname in files:
            path = self.dir / fname
            if not path.exists():
                raise SafetensorsError(f"{path}: listed in {INDEX_NAME} but missing")
            for name, info in _read_header(path).items():
                if weight_map is not None and weight_map.get(name) != fname:
                    raise SafetensorsError(f"{path}: tensor {name!r} is not listed for this file in {INDEX_NAME}")
                self.tensors[name] = info
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(self.tensors))
            if absent:
                raise SafetensorsError(f"{INDEX_NAME} lists tensors absent from the shards: {absent[:5]}")

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `name`, or only its rows [start, start + count) along dim 0 (a contiguous byte range)."""
        info = self.tensors[name]
        shape, start = info.shape, info.start
        if rows is not None:
            row_bytes = info.nbytes // shape[0] if shape[0] else 0
            shape, start = (rows[1], *shape[1:]), start + rows[0] * row_bytes
        out = torch.empty(shape, dtype=info.dtype)
        nbytes = out.numel() * out.element_size()
        with open(info.path, "rb") as f:
            f.seek(start)
            got = f.readinto(out.reshape(-1).view(torch.uint8).numpy()) if nbytes else 0
        if got != nbytes:
            raise SafetensorsError(f"{info.path}: truncated while reading {name!r}")
        return out


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def _header_bytes(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        n = _nbytes(dtype, shape)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class ShardedSafetensorsWriter:
    """Writes tensors, in a planned order, into shards of at most `max_shard_bytes` plus an index.

    The plan (names, dtypes, shapes) is fixed up front so each shard's header is written first;
    `write(name, tensor)` then streams data and must follow the plan's order.
    """

    def __init__(self, out_dir: str | os.PathLike, plan: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 max_shard_bytes: int):
        self.dir = Path(out_dir)
        shards: list[list] = [[]]
        size = 0
        for entry in plan:
            n = _nbytes(entry[1], entry[2])
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += n
        total = len(shards)
        self.files = [f"model-{k + 1:05d}-of-{total:05d}.safetensors" for k in range(total)]
        self._shards = shards
        self._order = [(k, e) for k, shard in enumerate(shards) for e in shard]
        self._pos = 0
        self._stream = None
        self._shard = -1
        self.total_bytes = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        k, (want, dtype, shape) = self._order[self._pos]
        if name != want or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"write order broken: got {name} {tensor.dtype} {tuple(tensor.shape)}, "
                               f"planned {want} {dtype} {shape}")
        if k != self._shard:
            self._open(k)
        data = tensor.contiguous().reshape(-1)
        if data.numel():
            self._stream.write(data.view(torch.uint8).numpy().data)
        self.total_bytes += data.numel() * dtype.itemsize
        self._pos += 1

    def _open(self, k: int) -> None:
        self._close()
        self._shard = k
        self._stream = open(self.dir / self.files[k], "wb")
        self._stream.write(_header_bytes(self._shards[k]))

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
            self._stream = None

    def finish(self) -> None:
        if self._pos != len(self._order):
            missing = [e[0] for _, e in self._order[self._pos:]]
            raise RuntimeError(f"export ended before writing {missing[:5]}")
        self._close()
        weight_map = {e[0]: self.files[k] for k, e in self._order}
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

