"""Megatron-Core torch_dist checkpoint (converted or saved by the trainer) -> HF safetensors.

Reads one layer of one tensor at a time and streams it into shards of at most --max-shard-size,
written with an index, config and tokenizer files, so `AutoModelForCausalLM.from_pretrained(OUT)`
and vLLM load OUT unchanged. Padded vocab rows are trimmed; a tied output layer is not written.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from harmony_mcore.bridge.files import (HF_SUBDIR, INFO_NAME, ConversionError, atomic_output, check_output, copy_side_files,
                               read_hf_config)
from harmony_mcore.bridge.dist_ckpt import CheckpointReader, is_dist_checkpoint
from harmony_mcore.bridge.mapping import VOCAB, Mapping, get_mapping
from harmony_mcore.bridge.safetensors_io import ShardedSafetensorsWriter
from harmony_mcore.dtypes import DTYPES, torch_dtype

_MODEL_PREFIXES = ("embedding.", "decoder.", "output_layer.")  # everything else: optimizer, RNG, ...


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        raise ConversionError(f"--max-shard-size {text!r}: use e.g. 5GB, 500MB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def find_checkpoint(path: Path) -> Path:
    """The dist checkpoint at `path`: itself, a trainer step's `model/`, or the newest step of a
    run's checkpoint directory (`step_*/model`, also under `checkpoints/`)."""
    if is_dist_checkpoint(path):
        return path
    if is_dist_checkpoint(path / "model"):
        return path / "model"
    for root in (path, path / "checkpoints"):
        steps = sorted(p for p in root.glob("step_*") if is_dist_checkpoint(p / "model")) if root.is_dir() else []
        if steps:
            return steps[-1] / "model"
    raise ConversionError(f"--ckpt {path}: not a Megatron-Core distributed checkpoint (no metadata.json), a "
                          "trainer step directory or a run's checkpoint directory")


def find_hf_config_dir(ckpt: Path, given: Path | None) -> Path:
    """The HF config the checkpoint was written from: --hf-config, else the checkpoint's own `hf/`
    (a converted checkpoint), else for a trainer step (`step_*/model`) the `hf/` of its checkpoint
    folder, which the trainer writes. Nothing else is tried: a neighbouring model's config would
    export wrong weights without an error."""
    if given is not None:
        if not (given / "config.json").is_file():
            raise ConversionError(f"--hf-config {given}: no config.json there")
        return given
    own = [ckpt / HF_SUBDIR]
    if ckpt.name == "model" and ckpt.parent.name.startswith("step_"):
        own.append(ckpt.parent.parent / HF_SUBDIR)
    for cand in own:
        if (cand / "config.json").is_file():
            return cand
    raise ConversionError(f"no HF config.json for {ckpt} (looked in {' and '.join(map(str, own))}): pass --hf-config "
                          "DIR, the HF model directory the checkpoint was trained or converted from")


def check_keys(mapping: Mapping, reader: CheckpointReader) -> None:
    """Every megatron tensor of the model is stored with the config's shape; no stray model tensors."""
    expected = {}
    for name in mapping.mcore_names():
        rule, layer = mapping.rule(name)
        shape = mapping.mcore_shape(name)
        expected[rule.checkpoint_key] = (rule, shape if layer is None else (mapping.num_layers, *shape))
    stored = {k for k in reader.tensors if k.startswith(_MODEL_PREFIXES)}
    missing = sorted(set(expected) - stored)
    unused = sorted(stored - set(expected))
    if missing:
        raise ConversionError(f"{reader.path}: missing tensors for {mapping.arch}: {missing[:8]} (a checkpoint of "
                              "another model, or the wrong --hf-config?)")
    if unused:
        raise ConversionError(f"{reader.path}: tensors not used by {mapping.arch}: {unused[:8]} (wrong "
                              "--hf-config, or an unsupported model variant)")
    for key, (rule, shape) in expected.items():
        got = reader.shape(key)
        ok = (got[0] >= shape[0] and got[1:] == shape[1:]) if rule.tp == VOCAB else got == shape
        if not ok:
            raise ConversionError(f"{reader.path}: {key} has shape {got}, config.json implies {shape}")


class _LayerBuffers:
    """Two buffers per shape of a per-layer block, handed out in turn.

    Every layer has blocks of the same shapes, so reading into reused buffers saves a page fault
    per 4 KiB of a fresh one (as much CPU as the read itself). Two suffice with one read ahead:
    when a buffer comes round again, the block read into it two uses ago has been written.
    The embedding and output layer are read once each, into fresh memory that is freed after.
    """

    def __init__(self) -> None:
        self._rings: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        ring = self._rings.setdefault((shape, dtype), [])
        ring.append(torch.empty(shape, dtype=dtype) if len(ring) < 2 else ring.pop(0))
        return ring[-1]


def _read(mapping: Mapping, reader: CheckpointReader, name: str, buffers: _LayerBuffers) -> torch.Tensor:
    rule, layer = mapping.rule(name)
    if layer is None:
        return reader.read(rule.checkpoint_key)
    key = rule.checkpoint_key
    shape = (1, *reader.shape(key)[1:])
    out = buffers.take(shape, reader.dtype(key))
    return reader.read(key, (layer,) + (0,) * (len(shape) - 1), shape, out=out)[0]


def _hf_tensors(mapping: Mapping, reader: CheckpointReader, buffers: _LayerBuffers, name: str,
                dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    """The HF tensors of megatron tensor `name`, contiguous so that the copy out of the fused QKV
    happens here, in the read-ahead thread, not in the writing one."""
    tensor = _read(mapping, reader, name, buffers).to(dtype)
    return [(n, t.contiguous()) for n, t in mapping.mcore_to_hf(name, tensor)]


def _read_ahead(read: Callable[[str], Any], names: list[str]) -> Iterator[tuple[str, Any]]:
    """(name, read(name)) in order, reading the next name in a worker thread while the caller
    writes this one: reads and writes are system calls that overlap on two cores, where one
    thread doing both is CPU-bound. One read ahead bounds memory to one extra tensor."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")
    try:
        pending = pool.submit(read, names[0]) if names else None
        for k, name in enumerate(names):
            result = pending.result()
            pending = pool.submit(read, names[k + 1]) if k + 1 < len(names) else None
            yield name, result
    finally:  # also when the caller stops early (a write failed): drop the read in flight
        pool.shutdown(wait=True, cancel_futures=True)


def convert(ckpt: str | Path, out: str | Path, *, hf_config: str | Path | None = None, dtype: str | None = None,
            max_shard_size: str = "5GB", overwrite: bool = False, log=print) -> dict:
    """Export a Megatron-Core checkpoint at `ckpt` to an HF model directory at `out`."""
    given, out = Path(ckpt), Path(out)
    shard_bytes = parse_size(max_shard_size)
    ckpt = find_checkpoint(given)
    cfg_dir = find_hf_config_dir(ckpt, Path(hf_config) if hf_config else None)
    inputs = dict(inputs=[ckpt, cfg_dir], holders=[given])
    check_output(out, overwrite, **inputs)  # fail before reading gigabytes
    config = read_hf_config(cfg_dir)
    mapping = get_mapping(config)
    reader = CheckpointReader(ckpt)
    check_keys(mapping, reader)

    names = mapping.mcore_names()
    out_dtype = {n: torch_dtype(dtype) if dtype else reader.dtype(mapping.rule(n)[0].checkpoint_key) for n in names}
    plan = []
    for name in names:
        shape = mapping.mcore_shape(name)
        fake = torch.empty(shape, dtype=out_dtype[name], device="meta")
        plan += [(n, t.dtype, tuple(t.shape)) for n, t in mapping.mcore_to_hf(name, fake)]
    start = time.perf_counter()
    with atomic_output(out, overwrite, **inputs) as tmp:
        writer = ShardedSafetensorsWriter(tmp, plan, shard_bytes)
        buffers = _LayerBuffers()
        for _, hf_tensors in _read_ahead(lambda n: _hf_tensors(mapping, reader, buffers, n, out_dtype[n]), names):
            for hf_name, t in hf_tensors:
                writer.write(hf_name, t)
        writer.finish()
        copy_side_files(cfg_dir, tmp)
        dtypes = set(out_dtype.values())
        if len(dtypes) == 1:
            name = str(dtypes.pop()).removeprefix("torch.")
            _set_config_dtype(tmp / "config.json", name if name in DTYPES.values() else None)
        info = {"direction": "mcore-to-hf", "checkpoint": str(ckpt.resolve()), "hf_config": str(cfg_dir.resolve())}
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    seconds = round(time.perf_counter() - start, 3)
    log(f"wrote {out} ({mapping.arch}, {len(plan)} tensors in {len(writer.files)} shard(s)) from {ckpt} "
        f"(HF config and tokenizer from {cfg_dir}) in {seconds} s")
    return {"checkpoint": str(ckpt), "hf_config": str(cfg_dir), "tensors": len(plan), "shards": len(writer.files),
            "seconds": seconds}


def _set_config_dtype(path: Path, name: str | None) -> None:
    """Record the exported dtype in config.json (transformers 4.x key `torch_dtype`, 5.x `dtype`)."""
    if name is None:
        return
    config = json.loads(path.read_text())
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    if all(config.get(k) == name for k in keys):
        return  # keep the file byte-identical when nothing changes
    for k in keys:
        config[k] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
