"""A crafted checkpoint must not run code on any load path; genuine checkpoints still load.

The crafted `.metadata` is a pickle whose `__reduce__` creates a file (`open(marker, "w")`): if any
path unpickled it with plain pickle, the marker would exist afterwards.
"""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from harmony_mcore.bridge import hf_to_mcore
from conversion.cli import main as convert_main
from harmony_mcore import safe_pickle
from harmony_mcore.patches.torch import restricted_checkpoint_reader
from tests.conversion_models import save_hf_model


class _Touch:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safe")
    hf = save_hf_model("qwen2", root / "hf")
    hf_to_mcore.convert(hf, root / "ckpt", log=_quiet)
    return hf, root / "ckpt"


@pytest.fixture
def evil(genuine, tmp_path) -> tuple[Path, Path]:
    """(a converted checkpoint whose .metadata would create `marker` when unpickled, marker)."""
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil"
    shutil.copytree(genuine[1], ckpt)
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    return ckpt, marker


def test_restricted_unpickler_reads_genuine_metadata_and_refuses_code(genuine, tmp_path):
    from torch.distributed.checkpoint.metadata import Metadata

    with open(genuine[1] / ".metadata", "rb") as f:
        md = safe_pickle.restricted_load(f)
    assert isinstance(md, Metadata) and "embedding.word_embeddings.weight" in md.state_dict_metadata
    marker = tmp_path / "pwned"
    for payload in (_Touch(marker), Path.touch):  # a builtin, and a method of an allowed module
        with pytest.raises(safe_pickle.UnsafeCheckpointError, match="not checkpoint metadata"):
            safe_pickle.restricted_load(io.BytesIO(pickle.dumps(payload)))
    assert not marker.exists()


def test_torch_and_megatron_readers_are_guarded(evil):
    from megatron.core.dist_checkpointing.strategies.torch import _get_filesystem_reader
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    ckpt, marker = evil
    restricted_checkpoint_reader()
    for reader in (FileSystemReader(str(ckpt)), _get_filesystem_reader(ckpt)):
        with pytest.raises(safe_pickle.UnsafeCheckpointError):
            reader.read_metadata()
    # byte items (megatron's ShardedObjects) are torch.load-ed by the planner: weights only now
    buf = io.BytesIO()
    torch.save(_Touch(marker), buf)
    buf.seek(0)
    planner = DefaultLoadPlanner(flatten_state_dict=False)
    planner.state_dict = {}
    item = type("Item", (), {"dest_index": type("Index", (), {"fqn": "x"})()})()
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(item, buf)
    assert not marker.exists()


def test_every_command_refuses_crafted_metadata(evil, genuine, tmp_path, capsys):
    from harmony_mcore.cli import main

    ckpt, marker = evil
    hf, _ = genuine
    runs = [["convert", "mcore-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "o1")],
            ["convert", "verify", "--hf", str(hf), "--ckpt", str(ckpt)],
            ["eval", "--model", str(ckpt), "--benchmarks", "aime24", "--limit", "1", "--out", str(tmp_path / "o2")],
            ["train", "cpu", f"model.path={ckpt}", "model.hf_config=null", f"output_dir={tmp_path / 'o3'}"]]
    for argv in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not checkpoint metadata" in err and "Traceback" not in err, (argv, err)
        assert not marker.exists(), argv
    assert not (tmp_path / "o1").exists()


def test_resume_skips_an_unsafe_checkpoint(evil, genuine, tmp_path):
    """The trainer's resume path picks its checkpoint through checkpoint_check, which opens the model
    metadata with the restricted reader: a crafted one is reported, skipped and never unpickled."""
    from harmony_mcore import checkpoint_check
    from harmony_mcore.config import ConfigError

    ckpt, marker = evil
    root = tmp_path / "ckpts"
    for step, src in ((2, genuine[1]), (4, ckpt)):
        shutil.copytree(src, root / f"step_{step:07d}" / "model")
        (root / f"step_{step:07d}" / "state.json").write_text('{"step": %d, "layout": {"world": 1}}' % step)
    messages = []
    assert checkpoint_check.pick("auto", root, log=messages.append) == root / "step_0000002"
    assert "step_0000004" in messages[0] and "not checkpoint metadata" in messages[0]
    with pytest.raises(ConfigError, match="not checkpoint metadata"):
        checkpoint_check.pick(str(root / "step_0000004"), root, log=messages.append)
    assert not marker.exists()


def _first_distcp(ckpt: Path) -> Path:
    return next(ckpt.glob("*.distcp"))


@pytest.mark.parametrize("damage, msg", [
    (lambda c: (c / ".metadata").unlink(), "missing, truncated or corrupt"),
    (lambda c: (c / ".metadata").write_bytes((c / ".metadata").read_bytes()[:50]), "missing, truncated or corrupt"),
    (lambda c: (c / ".metadata").write_bytes(pickle.dumps({"not": "metadata"})), "missing, truncated or corrupt"),
    (lambda c: _first_distcp(c).unlink(), "is missing"),
    (lambda c: _first_distcp(c).write_bytes(_first_distcp(c).read_bytes()[:100]), "is truncated"),
    (lambda c: (c / "common.pt").unlink(), "common.pt is missing"),
    (lambda c: (c / "metadata.json").write_text("{"), "corrupt"),
    (lambda c: (c / "metadata.json").write_text('{"sharded_backend": "zarr"}'), "only torch_dist"),
])
def test_verify_on_a_damaged_checkpoint_is_one_line(genuine, tmp_path, capsys, damage, msg):
    hf, ckpt = genuine
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    damage(broken)
    assert convert_main(["verify", "--hf", str(hf), "--ckpt", str(broken)]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err, err
    from harmony_mcore.cli import main  # train refuses it before starting any rank

    assert main(["train", "cpu", f"model.path={broken}", "model.hf_config=null", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err, err
