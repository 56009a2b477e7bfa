"""Shared pieces of the converters: errors, atomic output directories, HF side files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

HF_SUBDIR = "hf"  # HF config + tokenizer files kept next to a Megatron checkpoint
INFO_NAME = "harmony_convert.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class ConversionError(Exception):
    """A user-facing conversion failure; the message says what to do."""


def read_hf_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def hf_dtype_kwargs(dtype) -> dict:
    """`from_pretrained` dtype argument: `dtype` in transformers >= 5, `torch_dtype` before."""
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other small non-weight files."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in sorted(src.iterdir()):
        if (not p.is_file() or p.name.startswith(".") or p.name.endswith(_WEIGHT_SUFFIXES)
                or p.name in _WEIGHT_INDEXES):
            continue
        shutil.copy2(p, dst / p.name)
        copied.append(p.name)
    return copied


@contextlib.contextmanager
def atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory beside `out`, renamed to `out` only if the body succeeds.

    A failed conversion leaves nothing at `out`; with `overwrite` the old output is replaced
    only at the very end.
    """
    out = out.resolve()
    if out.exists() and not overwrite:
        raise ConversionError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
