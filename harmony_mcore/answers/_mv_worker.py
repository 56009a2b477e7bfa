"""Math-verify worker process: parses forms and verifies pairs, one reply per operation.

Started as `python -m harmony_mcore.answers._mv_worker FD` (a fresh interpreter, so it never
re-imports the caller's __main__ or inherits torch threads); FD is its end of a socket pair.
Kept free of torch and of the rest of the package. The parent enforces the wall-clock
timeout by killing this process; math-verify's own SIGALRM timeouts are switched off
because they cannot stop long C-level computations (huge integer powers) and would fail
silently anyway.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

# Codes sent back per operation.
NOT_EQUAL, EQUAL, ERROR, SKIPPED = 0, 1, -1, 2  # verify ops
UNPARSED, PARSED = 0, 1  # parse ops (ERROR also possible)

_PARSE_CACHE_SIZE = 4096


def _limit_memory(mem_mb: int | None) -> None:
    if not mem_mb:
        return
    try:
        import resource

        limit = mem_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not POSIX, or not permitted: timeout still holds
        pass


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, even while stuck in a long computation."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(conn, mem_mb: int | None = None) -> None:
    """Loop: receive a job (forms, pairs, start, bad), run ops from `start`, reply (op, code).

    Ops are numbered: first one parse per form, then one verify per pair (i, j) of form
    indices. `bad` holds form indices the parent gave up on; pairs touching them are skipped.
    """
    _limit_memory(mem_mb)
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    cache: OrderedDict[str, list] = OrderedDict()

    def parsed(form: str) -> list:
        hit = cache.get(form)
        if hit is not None:
            cache.move_to_end(form)
            return hit
        try:
            # A box makes math-verify read the form as LaTeX (a bare `\frac{1}{2}` may not match).
            value = parse("\\boxed{" + form + "}", parsing_timeout=None)
        except BaseException:
            cache[form] = []  # a form that failed once stays unparsed in this worker
            raise
        cache[form] = value
        if len(cache) > _PARSE_CACHE_SIZE:
            cache.popitem(last=False)
        return value

    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        forms, pairs, start, bad = job
        n = len(forms)
        for op in range(start, n + len(pairs)):
            try:
                if op < n:
                    code = PARSED if parsed(forms[op]) else UNPARSED
                else:
                    i, j = pairs[op - n]
                    if i in bad or j in bad:
                        code = SKIPPED
                    else:
                        a, b = parsed(forms[i]), parsed(forms[j])
                        if not a or not b:
                            code = SKIPPED
                        else:
                            # verify() is asymmetric (gold first); either direction counts.
                            same = verify(a, b, timeout_seconds=None) or verify(
                                b, a, timeout_seconds=None
                            )
                            code = EQUAL if same else NOT_EQUAL
            except (Exception, RecursionError, MemoryError):
                code = ERROR
            conn.send((op, code))


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    _die_with_parent()
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]) or None)
