"""Process hygiene of a training run: one run per output_dir, and no rank outlives its launcher.

Two `flock`s in the output_dir; the kernel drops a flock when its holder dies (even by kill -9), so
neither ever goes stale:
- `<output_dir>/.lock`, exclusive: the run. `harmony train` takes it before launching; under Slurm +
  torchrun (no `harmony train`, so no HARMONY_RUN_LOCK in the environment) rank 0 takes it.
- `<output_dir>/.ranks.lock`, shared by every rank for its whole life. A rank that outlives its
  launcher (kill -9 of `harmony train`: the ranks finish their step, checkpoint and exit) still
  holds it, so `harmony train` refuses to start beside it (`refuse_if_ranks_alive`), and a rank
  whose launcher is gone before it took the lock does not start.
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

LOCK_ENV = "HARMONY_RUN_LOCK"  # pid of the `harmony train` that holds the run lock, for its ranks
RANKS_LOCK = ".ranks.lock"
ORPHAN_GRACE_S = 60.0
_PR_SET_PDEATHSIG = 1


def _open(path: Path, output_dir: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"output_dir={output_dir}: cannot be written ({e.strerror}): choose another "
                          "output_dir=") from None


def holders(path: Path) -> list[int]:
    """PIDs holding a flock on `path`, from /proc/locks (Linux; elsewhere, or if unreadable: [])."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.replace("->", "").split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode and fields[4].isdigit():
            pids.add(int(fields[4]))
    return sorted(pids)


def lock_output_dir(output_dir: Path) -> int:
    """Take the run lock of `output_dir` (created if needed); returns the open descriptor to keep."""
    fd = _open(Path(output_dir).expanduser() / ".lock", output_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"output_dir={output_dir} is in use by another run (pid {holder}): wait for it, stop "
                          "it (touch <output_dir>/STOP), or choose another output_dir=") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def refuse_if_ranks_alive(output_dir: Path) -> None:
    """For a launcher that holds the run lock: refuse (never wait) while ranks of an earlier run of
    this output_dir live on, e.g. after their `harmony train` was killed with -9."""
    path = Path(output_dir).expanduser() / RANKS_LOCK
    fd = _open(path, output_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at once: only a probe
    except BlockingIOError:
        pids = " ".join(map(str, holders(path))) or "?"
        raise ConfigError(f"output_dir={output_dir}: ranks of an earlier run (pids {pids}) are still running there "
                          f"after their launcher ended; they checkpoint after their current step and exit (within "
                          f"{ORPHAN_GRACE_S:.0f} s). Not starting beside them: rerun when they are gone, or end "
                          f"them (kill {pids})") from None
    finally:
        os.close(fd)


def lock_rank(output_dir: Path, rank: int) -> list[int]:
    """A rank's locks, kept for its life: the shared rank lock, then either the check that the
    `harmony train` that launched it still holds the run lock, or (no `harmony train`) rank 0's run lock."""
    output_dir = Path(output_dir).expanduser()
    fd = _open(output_dir / RANKS_LOCK, output_dir)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a launcher's instant probe
    launcher = os.environ.get(LOCK_ENV)
    if not launcher:
        return [fd] + ([lock_output_dir(output_dir)] if rank == 0 else [])
    # From here on no new launcher gets past refuse_if_ranks_alive. One that took the run lock
    # before has already written its pid there; a free run lock means ours is gone.
    probe = _open(output_dir / ".lock", output_dir)
    try:
        fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held_by = None
    except BlockingIOError:
        held_by = os.pread(probe, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(probe)
    if held_by != launcher:
        os.close(fd)
        raise ConfigError(f"output_dir={output_dir}: the `harmony train` that launched this rank (pid {launcher}) "
                          f"no longer holds the run lock ({'held by pid ' + held_by if held_by else 'free'}): "
                          "this rank does not start")
    return [fd]


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
