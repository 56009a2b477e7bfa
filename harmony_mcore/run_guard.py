"""Process hygiene of a training run: one run per output_dir, and no rank outlives its launcher.

- `lock_output_dir`: an exclusive `flock` on `<output_dir>/.lock`, held for the life of the process
  that took it (the kernel drops it when that process dies, even by kill -9, so it never goes stale).
  `harmony train` takes it before launching; a rank takes it only when nothing launched it through
  `harmony train` (Slurm + torchrun), which is marked by HARMONY_RUN_LOCK in the environment.
- `die_with_parent`: torchrun's `preexec_fn`: the kernel sends it SIGKILL when the launcher dies.
- `watch_parent`: in each rank, a thread that notices its launcher (torchrun) is gone; the rank then
  stops like on SIGTERM (checkpoint after this step) and exits hard after a grace period if the step
  cannot finish (e.g. a peer is already gone and a collective hangs).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from harmony_mcore.config import ConfigError

LOCK_ENV = "HARMONY_RUN_LOCK"
ORPHAN_GRACE_S = 60.0
_PR_SET_PDEATHSIG = 1


def lock_output_dir(output_dir: Path) -> int:
    """Take the run lock of `output_dir` (created if needed); returns the open descriptor to keep."""
    path = Path(output_dir).expanduser() / ".lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"output_dir={output_dir}: cannot be written ({e.strerror}): choose another "
                          "output_dir=") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"output_dir={output_dir} is in use by another run (pid {holder}): wait for it, stop "
                          "it (touch <output_dir>/STOP), or choose another output_dir=") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(fd, False)
    return fd


def die_with_parent() -> None:
    """In a child before exec: SIGKILL when the parent dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def watch_parent(on_orphan: Callable[[], None], grace_s: float = ORPHAN_GRACE_S, poll_s: float = 1.0) -> None:
    """Call `on_orphan` once this process's parent is gone, then end the process after `grace_s`."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_orphan()
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
