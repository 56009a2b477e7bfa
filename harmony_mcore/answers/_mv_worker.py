"""Math-verify worker process: parses forms and verifies pairs, one reply per operation.

Started by `main` in a fresh interpreter (so it never re-imports the caller's __main__ or
inherits torch threads); FD is its end of a socket pair.
Kept free of torch and of the rest of the package. The parent enforces the wall-clock
timeout by killing this process; math-verify's own SIGALRM timeouts are switched off
because they cannot stop long C-level computations (huge integer powers) and would fail
silently anyway.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

# Codes sent back per operation.
NOT_EQUAL, EQUAL, ERROR, SKIPPED, FAR = 0, 1, -1, 2, 4  # verify ops (FAR: numbers far apart)
UNPARSED, PARSED, HUGE = 0, 1, 3  # parse ops (ERROR also possible)

_PARSE_CACHE_SIZE = 4096
_MAX_BITS = 10**6  # a literal power with a bigger result (in bits) is never evaluated
_MAX_FACTORIAL = 5000


def _huge(expr) -> bool:
    """Whether evaluating `expr` could build an astronomically large (or small) number.

    math-verify parses `10^{10^{10}}` or `(10^{10})!` unevaluated, then hangs in verify when
    sympy evaluates it; refusing such forms up front saves a timeout per pair. Exponents
    are themselves checked first, so `3^{2^{3}}` passes and a tower of twos does not.
    """
    import mpmath
    from sympy import Pow, factorial, log, preorder_traversal

    for node in preorder_traversal(expr):
        if isinstance(node, Pow):
            base, exp = node.args
            if not (base.is_number and exp.is_number) or base.is_zero:
                continue
            if _huge(base) or _huge(exp):
                return True
            try:  # fast path: mpmath floats never overflow
                b = mpmath.mpf(abs(base.evalf(15))._to_mpmath(53))
                bits = mpmath.mpf(abs(exp.evalf(15))._to_mpmath(53)) * abs(mpmath.log(b, 2))
            except (AttributeError, TypeError, ValueError):
                bits = (abs(exp) * abs(log(abs(base), 2))).evalf(5)
                if not bits.is_number:
                    continue
            if bits > _MAX_BITS:
                return True
        elif isinstance(node, factorial):
            n = node.args[0]
            if n.is_number and (_huge(n) or abs(n.evalf(5)) > _MAX_FACTORIAL):
                return True
    return False


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


def _fingerprint(values: list) -> tuple[complex, ...] | None:
    """Numeric values of a parse result if every parsed object is a closed-form number."""
    out = []
    for v in values:
        if isinstance(v, str):
            continue
        if not getattr(v, "is_number", False):
            return None
        try:
            out.append(complex(v.evalf(20)))
        except (TypeError, ValueError, OverflowError):
            return None
    return tuple(out) or None


def _far_apart(fa: tuple[complex, ...], fb: tuple[complex, ...]) -> bool:
    """Every value of one is far from every value of the other: no verify() can match them.

    The margin (1e-4 relative) is far wider than math-verify's own float tolerance (6
    decimals), so this only skips comparisons whose answer is certainly "not equal".
    """
    return all(abs(x - y) > 1e-4 * max(1.0, abs(x), abs(y)) for x in fa for y in fb)


def serve(conn, mem_mb: int | None = None) -> None:
    """Loop: receive a job (forms, pairs, start, bad), run ops from `start`, reply (op, code).

    Ops are numbered: first one parse per form, then one verify per pair (i, j) of form
    indices. `bad` holds form indices the parent gave up on; pairs touching them are skipped.
    """
    _limit_memory(mem_mb)
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # form -> (status, parse result, its strings, numeric fingerprint)
    cache: OrderedDict[str, tuple[int, list, set, tuple | None]] = OrderedDict()

    def parsed(form: str) -> tuple[int, list, set, tuple | None]:
        hit = cache.get(form)
        if hit is not None:
            cache.move_to_end(form)
            return hit
        try:
            # A box makes math-verify read the form as LaTeX (a bare `\frac{1}{2}` may not match).
            value = parse("\\boxed{" + form + "}", parsing_timeout=None)
            if not value:
                entry = (UNPARSED, [], set(), None)
            elif any(_huge(v) for v in value if not isinstance(v, str)):
                entry = (HUGE, [], set(), None)
            else:
                strings = {v.strip() for v in value if isinstance(v, str)}
                entry = (PARSED, value, strings, _fingerprint(value))
        except (Exception, RecursionError, MemoryError):
            entry = (ERROR, [], set(), None)
        cache[form] = entry
        if len(cache) > _PARSE_CACHE_SIZE:
            cache.popitem(last=False)
        return entry

    # Trigger sympy's lazy imports and first-use setup now, not inside a timed operation.
    for a, b in (("\\frac{\\sqrt{2}}{2}", "x^2+1"), ("(1,2]", "\\{1,2\\}"), ("0.5", "\\pi")):
        _, pa, _, _ = parsed(a)
        _, pb, _, _ = parsed(b)
        verify(pa, pb, timeout_seconds=None)
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
                    code = parsed(forms[op])[0]
                else:
                    code = SKIPPED
                    i, j = pairs[op - n]
                    if i not in bad and j not in bad:
                        (_, a, sa, fa), (_, b, sb, fb) = parsed(forms[i]), parsed(forms[j])
                        if a and b:
                            if fa and fb and not (sa & sb) and _far_apart(fa, fb):
                                code = FAR
                            # verify() is asymmetric (gold first); either direction counts.
                            elif verify(a, b, timeout_seconds=None) or verify(
                                b, a, timeout_seconds=None
                            ):
                                code = EQUAL
                            else:
                                code = NOT_EQUAL
            except (Exception, RecursionError, MemoryError):
                code = ERROR
            conn.send((op, code))


def main(argv: list[str]) -> None:
    """Entry point: `python -c "...; main(sys.argv[1:])" FD MEM_MB` (see equivalence._Slot)."""
    from multiprocessing.connection import Connection

    _die_with_parent()
    serve(Connection(int(argv[0])), int(argv[1]) or None)
