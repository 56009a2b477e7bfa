"""HF safetensors -> Megatron-Core torch_dist checkpoint, streaming one tensor at a time.

Output layout:
    OUT/metadata.json, common.pt, .metadata, __0_0.distcp   the dist checkpoint (any TP/PP loads it)
    OUT/hf/                                                 config.json, tokenizer, generation config
    OUT/harmony_convert.json                                what was converted, how
Vocabulary rows are stored unpadded: megatron marks embedding/output tensors `allow_shape_mismatch`
and zero-fills the padding of whatever padded size the loading model uses. Chunks are cut at the
TP boundaries of `--tp`, so loading at that TP reads no bytes it does not need (any TP still works).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harmony_mcore.bridge.files import (HF_SUBDIR, INFO_NAME, ConversionError, atomic_output, check_output, copy_side_files,
                               read_hf_config)
from harmony_mcore.bridge.dist_ckpt import Chunk, write_checkpoint
from harmony_mcore.bridge.mapping import GATE_UP, REPLICATED, ROW, Mapping, get_mapping
from harmony_mcore.bridge.safetensors_io import SafetensorsReader
from harmony_mcore.dtypes import torch_dtype


def check_names_and_shapes(mapping: Mapping, reader: SafetensorsReader) -> None:
    """Every HF tensor the model needs is present with the config's shape, and nothing else is."""
    expected, present = mapping.hf_shapes, reader.tensors
    missing = [n for n in expected if n not in present]
    extra = sorted(n for n in present if n not in expected and not mapping.is_ignorable_hf(n))
    if missing:
        raise ConversionError(f"{reader.dir}: missing tensors for {mapping.arch}: {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''} (incomplete download, or config.json "
                              "does not match the weights)")
    if extra:
        raise ConversionError(f"{reader.dir}: tensors not used by {mapping.arch}: {extra[:8]}"
                              f"{' ...' if len(extra) > 8 else ''} (config.json does not match the weights, "
                              "or an unsupported variant)")
    for name, shape in expected.items():
        if present[name].shape != shape:
            raise ConversionError(f"{present[name].path}: {name} has shape {present[name].shape}, config.json "
                                  f"implies {shape}")


MAX_CHUNK_BYTES = 256 * 2**20  # bounds the memory of writing (and later reading) one chunk


def _pieces(layout: str, shape: tuple[int, ...], tp: int, itemsize: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(offsets, sizes) of the stored blocks: the TP=`tp` ranks' blocks, row-split further so that
    none exceeds MAX_CHUNK_BYTES (embeddings); a replicated tensor is one block."""
    if layout == REPLICATED:
        return [((0,) * len(shape), shape)]
    n = (2 if layout == GATE_UP else 1) * tp  # an fc1 rank holds a gate block and an up block
    if layout != ROW:  # dim-0 sub-blocks stay contiguous; row-parallel blocks are split by TP only
        n *= max(1, -(-itemsize * int(torch.Size(shape).numel()) // (n * MAX_CHUNK_BYTES)))
    if n == 1:
        return [((0,) * len(shape), shape)]
    dim = 1 if layout == ROW else 0
    edges = [k * shape[dim] // n for k in range(n + 1)]  # fc1: n is even, so the gate/up boundary is an edge
    return [(tuple(edges[k] if d == dim else 0 for d in range(len(shape))),
             tuple(edges[k + 1] - edges[k] if d == dim else shape[d] for d in range(len(shape))))
            for k in range(n)]


def plan_chunks(mapping: Mapping, dtypes: dict[str, torch.dtype], tp: int) -> dict[tuple, tuple[str, Chunk]]:
    """(key, offsets) -> (megatron name, chunk), layer by layer in model order."""
    plan = {}
    for name in mapping.mcore_names():
        rule, layer = mapping.rule(name)
        shape = mapping.mcore_shape(name)
        for offsets, sizes in _pieces(rule.tp, shape, tp, dtypes[name].itemsize):
            if layer is None:
                chunk = Chunk(rule.checkpoint_key, shape, dtypes[name], offsets, sizes)
            else:
                chunk = Chunk(rule.checkpoint_key, (mapping.num_layers, *shape), dtypes[name],
                              (layer, *offsets), (1, *sizes))
            plan[(chunk.key, chunk.offsets)] = (name, chunk)
    return plan


class _Producer:
    """Cuts each planned chunk out of the megatron tensor built from HF tensors, copying little.

    A dim-0 block of a tensor that is a plain HF tensor (or the gate or up half of fc1) is read
    straight from the file; only the fused QKV and row-parallel blocks are built in memory.
    """

    def __init__(self, mapping: Mapping, reader: SafetensorsReader, plan: dict, dtypes: dict[str, torch.dtype]):
        self.mapping, self.reader, self.plan, self.dtypes = mapping, reader, plan, dtypes
        self._name: str | None = None  # DCP asks for one tensor's chunks in a row: keep only that one
        self._full: torch.Tensor | None = None

    def _built(self, name: str) -> torch.Tensor:
        if name != self._name:
            self._name, self._full = None, None  # free before reading the next
            srcs = [self.reader.get(n).to(self.dtypes[name]) for n in self.mapping.hf_sources(name)]
            self._full, self._name = self.mapping.hf_to_mcore(name, srcs), name
        return self._full

    def __call__(self, chunk: Chunk) -> torch.Tensor:
        name, _ = self.plan[(chunk.key, chunk.offsets)]
        per_layer = len(chunk.sizes) == len(self.mapping.mcore_shape(name)) + 1
        offsets, sizes = (chunk.offsets[1:], chunk.sizes[1:]) if per_layer else (chunk.offsets, chunk.sizes)
        layout, srcs = self.mapping.tp_layout(name), self.mapping.hf_sources(name)
        whole_rows = all(o == 0 for o in offsets[1:]) and tuple(sizes[1:]) == self.mapping.mcore_shape(name)[1:]
        if whole_rows and (layout == GATE_UP or (len(srcs) == 1 and layout != ROW)):
            k = int(layout == GATE_UP and offsets[0] >= self.mapping.ffn)  # gate rows, then up rows
            block = self.reader.get(srcs[k], rows=(offsets[0] - k * self.mapping.ffn, sizes[0]))
            block = block.to(self.dtypes[name])
        else:
            block = self._built(name)
            for dim, (o, n) in enumerate(zip(offsets, sizes)):
                block = block.narrow(dim, o, n)
            if block.untyped_storage().nbytes() != block.numel() * block.element_size():
                block = block.clone(memory_format=torch.contiguous_format)  # DCP writes whole storages
        return block.unsqueeze(0) if per_layer else block


def convert(hf_dir: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1, dtype: str | None = None,
            overwrite: bool = False, log=print) -> dict:
    """Convert an HF model directory into a Megatron-Core checkpoint at `out`; returns the summary."""
    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise ConversionError(f"--hf {hf_dir}: no such directory")
    if tp < 1 or pp < 1:
        raise ConversionError("--tp and --pp must be >= 1")
    check_output(out, overwrite, [hf_dir])  # fail before reading gigabytes
    config = read_hf_config(hf_dir)
    mapping = get_mapping(config)
    mapping.check_tp(tp)
    if mapping.num_layers % pp:
        raise ConversionError(f"--pp {pp} does not divide num_hidden_layers={mapping.num_layers}: pick a PP "
                              "that divides it")
    reader = SafetensorsReader(hf_dir)
    check_names_and_shapes(mapping, reader)
    dtypes = {}
    for name in mapping.mcore_names():
        src = {reader.tensors[n].dtype for n in mapping.hf_sources(name)}
        wrong = sorted(str(d) for d in src if d not in (torch.float32, torch.float16, torch.bfloat16))
        if wrong:
            raise ConversionError(f"{name}: HF weights are {', '.join(wrong)}; only float32, float16 and bfloat16 "
                                  "models convert (quantized or integer weights are not supported)")
        if len(src) > 1 and dtype is None:
            raise ConversionError(f"{name}: HF sources have mixed dtypes {sorted(map(str, src))}; pass --dtype")
        dtypes[name] = torch_dtype(dtype) if dtype else src.pop()
    plan = plan_chunks(mapping, dtypes, tp)
    start = time.perf_counter()
    with atomic_output(out, overwrite, [hf_dir]) as tmp:
        write_checkpoint(tmp, [c for _, c in plan.values()], _Producer(mapping, reader, plan, dtypes))
        side = copy_side_files(hf_dir, tmp / HF_SUBDIR)
        info = {"direction": "hf-to-mcore", "source": str(hf_dir.resolve()), "architecture": mapping.arch,
                "tp_layout": tp, "pp_checked": pp, "dtype": sorted({str(d) for d in dtypes.values()}),
                "vocab_rows": mapping.vocab, "chunks": len(plan), "hf_files": side}
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    info["seconds"] = round(time.perf_counter() - start, 3)
    log(f"wrote {out} ({mapping.arch}, {mapping.num_layers} layers, {len(plan)} chunks) in {info['seconds']} s")
    return info
