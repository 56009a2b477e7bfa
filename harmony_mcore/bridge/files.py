"""Shared pieces of the converters: errors, atomic output directories, HF side files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

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
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: not a JSON object (a model's config.json maps names to values)")
    return config


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


def check_output(out: Path, overwrite: bool, inputs: Sequence[Path] = (), holders: Sequence[Path] = ()) -> Path:
    """The resolved `out`, if writing it can lose nothing: it is not, does not contain and is not
    inside an input (nor is or contains a holder, e.g. the run folder an input was found in), and it
    is replaced only if it is a directory this tool wrote (has INFO_NAME)."""
    out = Path(out).resolve()
    for given, inside_too in [(p, True) for p in inputs] + [(p, False) for p in holders]:
        src = Path(given).resolve()
        if out == src or out in src.parents or (inside_too and src in out.parents):
            raise ConversionError(f"--out {out} is, contains or is inside the input {src}: choose an --out "
                                  "outside the input")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ConversionError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
        if not (out.is_dir() and (out / INFO_NAME).is_file()):
            raise ConversionError(f"--overwrite {out}: not a directory written by harmony convert (no {INFO_NAME}); "
                                  "it is left alone: remove it yourself or choose another --out")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise ConversionError(f"--out {out}: a parent is a file, not a folder: choose another --out")
    return out


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through atomic_output's cleanup


@contextlib.contextmanager
def atomic_output(out: Path, overwrite: bool, inputs: Sequence[Path] = (), holders: Sequence[Path] = ()
                  ) -> Iterator[Path]:
    """Yield a temporary directory beside `out`, renamed to `out` only if the body succeeds.

    A failed, interrupted (Ctrl-C) or terminated (SIGTERM) conversion leaves nothing at `out` and no
    temporary folder; with `overwrite` the old output is replaced only at the very end, and only if
    `check_output` allows it. The output is marked as ours with INFO_NAME (the body may fill it).
    """
    out = check_output(out, overwrite, inputs, holders)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm) if main_thread else None
    try:
        yield tmp
        if not (tmp / INFO_NAME).exists():
            (tmp / INFO_NAME).write_text("{}\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
