"""One math-mode Equivalence shared by the answers tests (a pool start costs seconds)."""

from harmony_mcore.answers import Equivalence

_SHARED: Equivalence | None = None


def shared_math_equivalence() -> Equivalence:
    """timeout_s=2, workers=2; closed at interpreter exit by Equivalence's finalizer."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Equivalence("math", timeout_s=2.0, workers=2)
    return _SHARED
