"""Every change this project makes to a library's internals, one module per patched library.

- `harmony_mcore.patches.torch`: CUDA calls on a CPU-only machine (for megatron-core), and
  PyTorch's distributed-checkpoint reader without code execution;
- `harmony_mcore.patches.megatron`: the distributed optimizer's checkpoint load on the torch-Adam
  fallback, and the MoE router without Transformer Engine.

Each module says which library versions its patches were written for (`WRITTEN_FOR`) and what
they replace or rely on (`TARGETS`: dotted path -> parameter names, None for a non-function;
`SOURCES`: module -> text its source must contain). A patch checks the installed versions before it
changes anything (`require`), and the guard test fails when a target disappears, changes its
parameters, or its source no longer has what the patch relies on. docs/patches.md lists them.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
from typing import Any


class PatchError(RuntimeError):
    """A patch met a library version it was not written for."""


def require(patch: str, written_for: dict[str, str]) -> None:
    """Raise PatchError unless every installed library is in its range (local builds, e.g. +cpu, count as
    their release; pre-releases are compared as versions)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for dist, spec in written_for.items():
        installed = metadata.version(dist)
        if not SpecifierSet(spec).contains(Version(installed).public, prereleases=True):
            raise PatchError(f"{patch} was written for {dist}{spec}, and {installed} is installed: install a version "
                             f"in that range, or check the patch against {installed} (docs/patches.md says what it "
                             "changes) and widen WRITTEN_FOR in its module")


def resolve(path: str) -> Any:
    """The object at a dotted path (the longest importable module, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"nothing importable in {path}")


def parameters(obj: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(obj).parameters)
