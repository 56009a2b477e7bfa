"""One math-mode Equivalence shared by the answers tests (a pool start costs seconds)."""

import contextlib

from harmony_mcore.answers import Equivalence

_SHARED: Equivalence | None = None


def shared_math_equivalence() -> Equivalence:
    """workers=2 and a generous timeout, so that a busy CI box does not turn slow-but-fine
    comparisons into timeouts; closed at interpreter exit by Equivalence's finalizer."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Equivalence("math", timeout_s=20.0, workers=2)
    return _SHARED


@contextlib.contextmanager
def pool_timeout(eq: Equivalence, seconds: float):
    """Run the block with the worker pool's per-operation timeout set to `seconds`."""
    pool = eq._ensure_pool()
    pool.timeout_s = seconds
    try:
        yield
    finally:
        pool.timeout_s = eq.timeout_s
