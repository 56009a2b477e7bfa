"""Number formats by the names that configs and command lines use (`model.dtype`, `--dtype`).

Imports no torch: `harmony_mcore.config` validates names with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# our name -> the torch attribute, which is also how transformers and vLLM spell it
DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name in DTYPES (a torch dtype passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])

