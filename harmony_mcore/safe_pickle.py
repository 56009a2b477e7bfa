"""Loading checkpoints without running code from them.

A torch_dist checkpoint's `.metadata` is a pickle, which PyTorch's checkpoint reader (and so
Megatron's `dist_checkpointing.load`) reads with `pickle.load`: a crafted file runs any code it
likes while "loading". Its byte items (Megatron's ShardedObjects) are read with
`torch.load(weights_only=False)`, the same hole. Checkpoints are downloaded from hubs, so every
harmony load path first routes both through restricted readers
(`harmony_mcore.patches.torch.restricted_checkpoint_reader()`, in this process; saving is untouched):

- `.metadata`: `RestrictedUnpickler`, which builds only the checkpoint-metadata classes listed
  below (plus pickle's own containers and scalars); anything else raises `UnsafeCheckpointError`;
- byte items: `torch.load(weights_only=True)` (tensors, containers and scalars only).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

_DCP = "torch.distributed.checkpoint."
# module -> names that a genuine DCP / Megatron metadata pickle refers to (traced on both writers)
ALLOWED: dict[str, frozenset[str]] = {
    _DCP + "metadata": frozenset({"Metadata", "StorageMeta", "MetadataIndex", "ChunkStorageMetadata",
                                  "TensorProperties", "TensorStorageMetadata", "BytesStorageMetadata",
                                  "_MEM_FORMAT_ENCODING"}),
    _DCP + "filesystem": frozenset({"_StorageInfo"}),
    _DCP + "planner": frozenset({"SavePlan", "LoadPlan", "WriteItem", "ReadItem", "WriteItemType", "LoadItemType",
                                 "TensorWriteData", "BytesIOWriteData"}),
    "torch": frozenset({"Size"}),
    "torch.serialization": frozenset({"_get_layout"}),  # looks a torch.layout up by name
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"set", "frozenset", "slice", "complex", "bytearray"}),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file refers to something other than checkpoint metadata."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refers to {module}.{name}, which is not checkpoint metadata: this file may run code when loaded "
            "with plain pickle, so it is refused (re-save the checkpoint with torch/megatron, or convert it "
            "from the HF model with `harmony convert hf-to-mcore`)")


def restricted_load(file: io.BufferedIOBase, **_: Any) -> Any:
    return RestrictedUnpickler(file).load()


class PickleForDCP:
    """Stands in for the `pickle` module inside torch.distributed.checkpoint.filesystem."""

    load = staticmethod(restricted_load)

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)
