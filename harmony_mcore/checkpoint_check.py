"""Which checkpoint a run resumes from: the newest one that is complete, never a damaged one.

A step folder is complete when its state.json parses, every dist-checkpoint folder in it (model/,
optimizer/) has safe metadata (harmony_mcore.safe_pickle) and all the data bytes that
metadata names, and every `*_rankNNNNN.pt` family (optimizer, RNG) is present for each rank of the
saved layout, as whole zip archives (torch.save's format; a truncated one lacks its directory).
Checking costs a metadata read and a few stats per folder, not a load. `auto` falls back past
damaged checkpoints with a message naming what is wrong; an explicit damaged one, or none complete
at all, is refused (starting over would overwrite the run's metrics).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Callable

from harmony_mcore.config import ConfigError

_RANK_FILE = re.compile(r"(.+)_rank(\d{5})\.pt")


def problems(step: Path) -> list[str]:
    """Why `step` cannot be resumed from (empty: it is complete)."""
    from harmony_mcore.bridge.dist_ckpt import CheckpointError, CheckpointReader, is_dist_checkpoint

    try:
        state = json.loads((step / "state.json").read_text())
        world = int(state["layout"]["world"]) if isinstance(state.get("layout"), dict) else None
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"state.json is missing or unreadable ({type(e).__name__}: {e})"]
    found = []
    if not is_dist_checkpoint(step / "model"):
        found.append("model/ is missing")
    for sub in sorted(p for p in step.iterdir() if p.is_dir() and is_dist_checkpoint(p)):
        try:
            found += [f"{sub.name}/{p}" for p in CheckpointReader(sub).missing_data()]
        except CheckpointError as e:
            found.append(str(e))
    families: dict[str, set[int]] = {}
    for f in step.glob("*_rank*.pt"):
        m = _RANK_FILE.fullmatch(f.name)
        if m:
            families.setdefault(m.group(1), set()).add(int(m.group(2)))
            if not zipfile.is_zipfile(f):
                found.append(f"{f.name} is truncated or corrupt")
    for name, ranks in sorted(families.items()):
        lacking = sorted(set(range(world or max(ranks) + 1)) - ranks)
        if lacking:
            found.append(f"{name}_rank*.pt is missing for ranks {lacking}")
    return found


def pick(setting: str, root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The step folder that checkpoint.resume=`setting` names (auto: the newest complete one under
    `root`, None if there is none at all; never: None)."""
    if setting == "never":
        return None
    if setting != "auto":
        path = Path(setting).expanduser()
        wrong = problems(path) if path.is_dir() else [f"{path} is not a folder"]
        if wrong:
            raise ConfigError(f"checkpoint.resume={setting}: not a complete checkpoint ({'; '.join(wrong[:3])}): "
                              "use auto, never or another step_* folder")
        return path
    path = latest(root, log)
    if path is None and root.is_dir() and any(root.glob("step_*")):
        raise ConfigError(f"no complete checkpoint under {root} (see above): repair or remove the damaged step_* "
                          "folders, or start over with checkpoint.resume=never")
    return path


def latest(root: Path, log: Callable[[str], None] = lambda _: None) -> Path | None:
    """The newest complete step folder under `root` (None if there is none); `log` hears each skipped one."""
    for path in sorted(root.glob("step_*"), reverse=True) if root.is_dir() else []:
        wrong = problems(path)
        if not wrong:
            return path
        log(f"skipping checkpoint {path}: {'; '.join(wrong[:3])}; trying the previous one")
    return None
