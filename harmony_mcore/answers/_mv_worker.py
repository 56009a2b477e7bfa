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

from harmony_mcore.answers.numeric import CONSTANT, NAMED, SYMBOLIC, distinct, make_print, symbol_value

# Codes sent back per operation.
# verify ops; FAR: values far apart, TEXT: text-only parse differs -- both "not equal" w/o verify()
NOT_EQUAL, EQUAL, ERROR, SKIPPED, FAR, TEXT = 0, 1, -1, 2, 4, 5
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


def _print(obj):
    """numeric.Print of one parsed object (a number or expression, an interval's endpoints,
    a tuple's, finite set's or matrix's elements), or None for anything else (relations,
    unions, a bare symbol e or i, which math-verify compares by name)."""
    from sympy import E, Expr, FiniteSet, Interval, MatrixBase, Mul, Symbol, Tuple

    if isinstance(obj, Symbol) and obj.name.lower() in ("e", "i"):
        return None
    if isinstance(obj, Interval):
        parts = [obj.start, obj.end]
    elif isinstance(obj, (FiniteSet, Tuple)):
        parts = list(obj)
    elif isinstance(obj, MatrixBase):
        parts = list(obj)
    elif isinstance(obj, Expr):
        parts = [obj]
    else:
        return None
    kind = CONSTANT
    values = []
    for part in parts:
        if not isinstance(part, Expr):
            return None
        symbols = part.free_symbols
        if symbols:
            kind = max(kind, SYMBOLIC)
            if any(len(s.name) > 1 for s in symbols) or (
                    isinstance(part, Mul) and all(a == E or isinstance(a, Symbol) for a in part.args)):
                kind = NAMED  # math-verify may compare these by concatenated names
            part = part.subs({s: symbol_value(s.name) for s in symbols})
        values.append(complex(part.evalf(20)))
    return make_print(values, kind)


def _prints(values: list) -> list | None:
    """One Print per parsed alternative, or None if any alternative has none."""
    out = []
    for v in values:
        if isinstance(v, str):
            continue
        try:
            p = _print(v)
        except (TypeError, ValueError, OverflowError, AttributeError):
            return None
        if p is None:
            return None
        out.append(p)
    return out or None


def serve(conn, mem_mb: int | None = None) -> None:
    """Loop: receive a job, run its ops from `start`, reply lists of (op, code).

    A job is (forms, prints, n_parse, pairs, start, bad). Ops are numbered: one parse per
    form in forms[:n_parse] (the others come with a numeric fingerprint from the parent in
    `prints` and are parsed only if a pair needs math-verify), then one verify per pair
    (i, j) of form indices. `bad` holds form indices the parent gave up on; pairs touching
    them are skipped.
    """
    _limit_memory(mem_mb)
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # form -> (status, parse result, its strings, fingerprints of its alternatives)
    cache: OrderedDict[str, tuple[int, list, set, list | None]] = OrderedDict()

    def parsed(form: str) -> tuple[int, list, set, list | None]:
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
                entry = (PARSED, value, strings, _prints(value))
        except (Exception, RecursionError, MemoryError):
            entry = (ERROR, [], set(), None)
        cache[form] = entry
        if len(cache) > _PARSE_CACHE_SIZE:
            cache.popitem(last=False)
        return entry

    def strings(form: str) -> set:
        """The text alternatives verify() compares as strings (a parsed form's, else itself)."""
        entry = cache.get(form)
        return entry[2] if entry else {form.strip()}

    def far(fa: list | None, fb: list | None) -> bool:
        return bool(fa and fb) and all(distinct(x, y) for x in fa for y in fb)

    def compare(fa: str, fb: str, pa, pb) -> int:
        # A side that parses to nothing, or to text only, settles the pair before the other
        # side is parsed: verify() would only compare its strings.
        for form, other, given in ((fa, fb, pa), (fb, fa, pb)):
            if given is None:
                _, value, texts, _ = parsed(form)
                if not value:
                    return SKIPPED
                if all(isinstance(v, str) for v in value):
                    return EQUAL if texts & strings(other) else TEXT
        fi = [pa] if pa else parsed(fa)[3]
        fj = [pb] if pb else parsed(fb)[3]
        if far(fi, fj) and not (strings(fa) & strings(fb)):
            return FAR
        a, b = parsed(fa)[1], parsed(fb)[1]
        if not (a and b):
            return SKIPPED
        # verify() is asymmetric (gold first); either direction counts.
        same = verify(a, b, timeout_seconds=None) or verify(b, a, timeout_seconds=None)
        return EQUAL if same else NOT_EQUAL

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
        forms, prints, n_parse, pairs, start, bad = job
        done: list[tuple[int, int]] = []  # results not sent yet

        def known(k: int):
            """Form k's prints without parsing it (False if that would need a parse)."""
            if prints[k]:
                return [prints[k]]
            entry = cache.get(forms[k])
            return entry[3] if entry else False

        for op in range(start, n_parse + len(pairs)):
            # Instant ops (cached parses, pairs decided by fingerprints) are batched; before
            # an op that may be slow, everything done so far is sent, so the parent's clock
            # for the timeout always runs on the op in progress.
            try:
                if op < n_parse:
                    if forms[op] not in cache:
                        conn.send(done)
                        done = []
                    code = parsed(forms[op])[0]
                else:
                    code = SKIPPED
                    i, j = pairs[op - n_parse]
                    if i not in bad and j not in bad:
                        fi, fj = known(i), known(j)
                        instant = fi is not False and fj is not False and far(fi, fj) and not (
                            strings(forms[i]) & strings(forms[j]))
                        if not instant:
                            conn.send(done)
                            done = []
                        code = FAR if instant else compare(forms[i], forms[j], prints[i], prints[j])
            except (Exception, RecursionError, MemoryError):
                code = ERROR
            done.append((op, code))
        conn.send(done)


def main(argv: list[str]) -> None:
    """Entry point: `python -c "...; main(sys.argv[1:])" FD MEM_MB` (see equivalence._Slot)."""
    from multiprocessing.connection import Connection

    _die_with_parent()
    serve(Connection(int(argv[0])), int(argv[1]) or None)
