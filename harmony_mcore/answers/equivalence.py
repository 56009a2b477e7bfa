"""Answer equivalence classes: exact strings, cheap normalisation, or math-verify.

Modes form a refinement chain, by construction: `exact` keys are stripped strings,
`normalized` keys are `normalize()` of them, and `math` unions normalized keys that
math-verify (or exact rational arithmetic, for plain numbers) finds equal. So two answers in
one `exact` class share a `normalized` class, which they share in `math`.

The reference (self_harmony) votes on raw strings -- our `exact` (it does not strip; our
extractor already has) -- and rewards with its `moderate` Hendrycks-style mode, which is
close to our `normalized` (we keep 0.5 and 1/2 apart there; `math` joins them).

Relation used in `math` mode, between two distinct normalized forms a, b:
- both plain numbers (integers, decimals, fractions): equal by value; if either is a
  decimal, equal after rounding both to 6 places -- math-verify's own rule for floats;
- both simple enough for `numeric.fingerprint` and their values far apart: not equal
  (math-verify could not find them equal; see numeric.py);
- otherwise math-verify in a worker process: verify(a, b) OR verify(b, a) (verify is
  asymmetric), which makes the relation symmetric;
- a form longer than `max_len`, one that would evaluate to an astronomically large number,
  or one whose parse timed out or crashed (or that took part in two timed-out pairs)
  equals nothing but itself; a timed-out pair counts as not equal.
Budgets keep pathological input bounded (pairs grow with the square of distinct answers): a problem
with more than `max_pairs` pairs left for math-verify, or whose math-verify work runs longer than
`problem_budget_s`, or that is still waiting when one call has run `batch_budget_s`, falls back to
its normalized classes (plus the exact-number and cached results, which cost nothing); the count is
`stats.degraded` (logged as equivalence/degraded, and reported by `harmony vote`).
Classes are the connected components of that relation (union-find): a non-transitive
"equality" chain a~b, b~c merges a, b, c. Components do not depend on answer order.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing.connection import wait

from harmony_mcore.answers import _mv_worker as W
from harmony_mcore.answers.moderate import moderate_key
from harmony_mcore.answers.numeric import (DEC_FORM, FRAC_FORM, INT_FORM, MAX_NUMBER_DIGITS, distinct, fingerprint,
                                           number_value)

MODES = ("math", "normalized", "moderate", "exact")

# ---------------------------------------------------------------------------------------
# Normalisation (pure, cheap, linear-time regexes)

_SPACING = re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad(?![A-Za-z])|~")  # not the `\\` of a row break
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_FRAC_CMD = re.compile(r"\\[dt]frac(?![A-Za-z])")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(
    r"(?<=[0-9}).)])\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
_CMD_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")  # `\pi r` must not become `\pir`
_WS = re.compile(r"\s+")
_FRAC_SHORT = re.compile(r"\\frac(\d|\{[^{}]*\})(\d|\{[^{}]*\})")
_SQRT_SHORT = re.compile(r"\\sqrt(\d+|[A-Za-z])")
_VAR_PREFIX = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?=(?!=)")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _brace_wrapped(s: str) -> bool:
    """True if s is one balanced `{...}` group."""
    if len(s) < 2 or s[0] != "{" or s[-1] != "}":
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += (c == "{") - (c == "}")
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


def _fmt_fraction(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def _canonical_number(s: str) -> str | None:
    """Canonical text of a plain number (int, decimal, a/b, \\frac{a}{b}), else None.

    Integers and fractions become reduced `p` / `\\frac{p}{q}`; decimals keep their decimal
    point (math-verify rounds floats, so 0.333333 and 1/3 must stay distinguishable here)
    but lose trailing zeros: "142.0" -> "142", ".50" -> "0.5".
    """
    if len(s) > MAX_NUMBER_DIGITS:
        return None
    m = INT_FORM.match(s)
    if m:
        v = int(m.group(2))
        return str(-v if m.group(1) == "-" else v)
    m = DEC_FORM.match(s)
    if m:
        sign, whole, frac = (m.group(1), m.group(2), m.group(3)) if m.group(3) else (m.group(4), m.group(5), "")
        frac = frac.rstrip("0")
        whole = str(int(whole or "0"))
        if not frac:
            return "0" if whole == "0" else ("-" if sign == "-" else "") + whole
        return ("-" if sign == "-" else "") + whole + "." + frac
    m = FRAC_FORM.match(s)
    if m:
        if m.group(2) is not None:
            sign, num, den = m.group(1), int(m.group(2)), int(m.group(3))
        else:
            sign, num, den = m.group(4), int(m.group(5)), int(m.group(6))
        if den == 0:
            return None
        v = Fraction(num, den)
        return _fmt_fraction(-v if sign == "-" else v)
    return None


_MAX_NORMALIZE = 10_000  # longer strings are returned stripped: bounds the (nesting-dependent) cost


def normalize(ans: str) -> str:
    """Hendrycks-style cheap normal form of an extracted answer (may return "")."""
    s = ans.strip()
    if len(s) > _MAX_NORMALIZE:
        return s
    s = s.replace("\n", " ").replace("\r", " ")
    s = _SPACING.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\displaystyle", "")
    s = _FRAC_CMD.sub(r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("{,}", ",")
    s = _TRAILING_UNIT.sub("", s)
    prev = None
    while prev != s:  # unwrap \text{..} from the inside out
        prev, s = s, _TEXT_WRAP.sub(r"\1", s)
    s = _CMD_SPACE.sub("\\1\x00", s)
    s = _WS.sub("", s).replace("\x00", " ")
    prev = None
    while prev != s:  # \frac12 -> \frac{1}{2}, also nested shorthand
        prev = s
        s = _FRAC_SHORT.sub(
            lambda m: "\\frac" + "".join(g if g.startswith("{") else "{" + g + "}" for g in m.groups()), s
        )
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if s.count("=") == 1:
        s = _VAR_PREFIX.sub("", s)
    s = s.rstrip(".")
    while _brace_wrapped(s):
        s = s[1:-1]
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return _canonical_number(s) or s


_normalize_cached = functools.lru_cache(maxsize=1 << 16)(normalize)
_fingerprint_cached = functools.lru_cache(maxsize=1 << 16)(fingerprint)

# ---------------------------------------------------------------------------------------
# Worker pool with a hard per-operation wall-clock timeout


@dataclass
class EquivalenceStats:
    calls: int = 0  # verify operations run by workers
    parses: int = 0  # parse operations run by workers
    cache_hits: int = 0  # pairs answered from the parent's cache
    numeric: int = 0  # pairs decided without math-verify (exact rationals, values far apart, text)
    timeouts: int = 0  # operations killed at the timeout (worker replaced)
    failures: int = 0  # worker crashes and exceptions inside math-verify
    rejected_too_long: int = 0  # forms longer than max_len, never given to math-verify
    rejected_huge: int = 0  # forms whose evaluation would build astronomically large numbers
    unparsed: int = 0  # forms math-verify could not parse (equal only to themselves)
    degraded: int = 0  # problems that hit a budget and fell back to normalized classes

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Job:
    """One problem's work: parse forms[:n_parse], then verify each pair (op numbers in that
    order). Forms from n_parse on carry the parent's numeric fingerprint in `prints` and are
    parsed inside a pair op only if that pair needs math-verify."""

    __slots__ = ("forms", "prints", "n_parse", "pairs", "codes", "bad", "dead", "strikes", "started", "degraded")

    def __init__(self, forms: list[str], pairs: list[tuple[int, int]],
                 prints: list[tuple | None] | None = None):
        self.prints = prints or [None] * len(forms)
        self.n_parse = sum(p is None for p in self.prints)
        assert all(p is None for p in self.prints[:self.n_parse]), "unprinted forms go first"
        self.forms, self.pairs = forms, pairs
        self.codes: list[int] = []
        self.bad: set[int] = set()  # forms whose remaining pairs are skipped
        self.dead: set[int] = set()  # ... and which are never retried (timeouts, crashes, huge)
        self.strikes: dict[int, int] = {}  # verify timeouts each form took part in
        self.started: float | None = None  # when a worker first took it (its budget runs from there)
        self.degraded = False  # over budget: its results are not used

    @property
    def n_ops(self) -> int:
        return self.n_parse + len(self.pairs)


_WORKER_MAIN = f"import sys; from {W.__name__} import main; main(sys.argv[1:])"


class _Slot:
    """One worker process and the job it is running."""

    __slots__ = ("proc", "conn", "job", "since", "ready")

    def __init__(self, mem_mb: int | None):
        parent, child = mp.Pipe()
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p))
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN, str(child.fileno()), str(mem_mb or 0)],
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn = parent
        self.job: _Job | None = None
        self.since = time.monotonic()
        self.ready = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()


class _Pool:
    """`n` workers plus one started spare, so a killed worker is replaced without waiting
    for a fresh interpreter to import sympy."""

    def __init__(self, n: int, timeout_s: float, mem_mb: int | None, stats: EquivalenceStats,
                 incidents: deque):
        self.timeout_s, self.mem_mb = timeout_s, mem_mb
        self.stats, self.incidents = stats, incidents
        self.slots = [_Slot(mem_mb) for _ in range(n)]
        self.spare = _Slot(mem_mb)

    def _replace(self, i: int) -> None:
        self.slots[i].kill()
        self.slots[i], self.spare = self.spare, _Slot(self.mem_mb)
        self.slots[i].since = time.monotonic()

    def _send(self, slot: _Slot, job: _Job) -> None:
        slot.job, slot.since = job, time.monotonic()
        job.started = job.started or slot.since
        slot.conn.send((job.forms, job.prints, job.n_parse, job.pairs, len(job.codes), job.bad))

    def _give_up_current(self, i: int, kind: str) -> _Job:
        """The op running in slot i timed out or crashed: record it, replace the worker."""
        job = self.slots[i].job
        op, n = len(job.codes), job.n_parse
        what = job.forms[op] if op < n else " ~ ".join(job.forms[k] for k in job.pairs[op - n])
        self.incidents.append((kind, "parse" if op < n else "verify", what[:200]))
        if kind == "timeout":
            self.stats.timeouts += 1
        else:
            self.stats.failures += 1
        if op < n:
            job.bad.add(op)
            job.dead.add(op)
        else:
            # We cannot tell which side made verify hang; a form in two hung pairs is the culprit.
            for k in job.pairs[op - n]:
                job.strikes[k] = job.strikes.get(k, 0) + 1
                if job.strikes[k] >= 2:
                    job.bad.add(k)
                    job.dead.add(k)
        job.codes.append(W.ERROR)
        self._replace(i)
        return job

    def _on_message(self, slot: _Slot, msg) -> None:
        slot.since = time.monotonic()
        if msg == "ready":
            slot.ready = True
            return
        for op, code in msg:
            self._on_result(slot, op, code)

    def _on_result(self, slot: _Slot, op: int, code: int) -> None:
        job = slot.job
        job.codes.append(code)
        if op < job.n_parse:
            self.stats.parses += 1
            if code != W.PARSED:
                job.bad.add(op)
            if code in (W.HUGE, W.ERROR):
                job.dead.add(op)
            if code == W.HUGE:
                self.stats.rejected_huge += 1
                self.incidents.append(("huge", "parse", job.forms[op][:200]))
        elif code in (W.FAR, W.TEXT):
            self.stats.numeric += 1
        elif code in (W.EQUAL, W.NOT_EQUAL, W.ERROR):
            self.stats.calls += 1
        if code == W.ERROR:
            self.stats.failures += 1
        if len(job.codes) == job.n_ops:
            slot.job = None

    @staticmethod
    def _check_started(slot: _Slot, now: float) -> None:
        if not slot.ready and (slot.proc.poll() is not None or now - slot.since > 120):
            raise RuntimeError(
                "math-verify worker process failed to start; check that "
                f"`{sys.executable} -c 'import math_verify'` works in this environment"
            )

    def _over_budget(self, i: int, why: str) -> None:
        """Abandon the job in slot i (its results are not used) and replace the busy worker."""
        job = self.slots[i].job
        job.degraded = True
        self.incidents.append(("budget", why, f"{len(job.forms)} forms, {len(job.pairs)} pairs"))
        self._replace(i)
        self.slots[i].job = None

    def run(self, jobs: list[_Job], job_budget_s: float = float("inf"), total_budget_s: float = float("inf")) -> None:
        """Fill each job's codes; never waits longer than timeout_s on one operation, job_budget_s on
        one job, or total_budget_s in all (jobs over a budget are marked `degraded`)."""
        todo = deque(j for j in jobs if j.n_ops)
        end = time.monotonic() + total_budget_s
        while todo or any(s.job is not None for s in self.slots):
            if time.monotonic() > end:
                for job in todo:
                    job.degraded = True
                todo.clear()
            for slot in self.slots:
                if slot.ready and slot.job is None and todo:
                    self._send(slot, todo.popleft())
            now = time.monotonic()
            for i, slot in enumerate(self.slots):
                if slot.job is not None and (now - slot.job.started > job_budget_s or now > end):
                    self._over_budget(i, "problem" if now <= end else "batch")
            if not (todo or any(s.job is not None for s in self.slots)):
                break
            deadlines = [min(s.since + self.timeout_s, s.job.started + job_budget_s, end)
                         for s in self.slots if s.job is not None]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 1.0
            conns = {s.conn: i for i, s in enumerate(self.slots)}
            conns[self.spare.conn] = -1
            for conn in wait(list(conns), timeout=wait_s):
                i = conns[conn]
                slot = self.spare if i < 0 else self.slots[i]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # worker died (segfault, OOM kill, ...)
                    self._check_started(slot, time.monotonic())
                    if i < 0:
                        self.spare.kill()
                        self.spare = _Slot(self.mem_mb)
                    elif slot.job is None:
                        self.stats.failures += 1
                        self._replace(i)
                    else:
                        job = self._give_up_current(i, "crash")
                        if len(job.codes) < job.n_ops:
                            todo.appendleft(job)
                    continue
                self._on_message(slot, msg)
            now = time.monotonic()
            for i, slot in enumerate(self.slots):
                self._check_started(slot, now)
                if slot.job is not None and now - slot.since > self.timeout_s:
                    job = self._give_up_current(i, "timeout")
                    if len(job.codes) < job.n_ops:
                        todo.appendleft(job)

    def close(self) -> None:
        for slot in [*self.slots, self.spare]:
            try:
                slot.conn.send(None)
            except (OSError, ValueError):
                pass
        for slot in [*self.slots, self.spare]:
            try:
                slot.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            slot.kill()
        self.slots = []


# ---------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    if a[0] == b[0]:
        return True
    return (a[1] or b[1]) and round(a[0], 6) == round(b[0], 6)


class Equivalence:
    """Equivalence classes of answers under `mode` ("math" | "normalized" | "moderate" | "exact").

    `math` mode starts worker processes lazily (first call that needs math-verify); call
    `close()` or use it as a context manager. Not thread-safe: use one per thread.
    """

    def __init__(self, mode: str = "math", timeout_s: float = 2.0, workers: int = 2,
                 max_len: int = 1000, cache_size: int = 200_000, worker_mem_mb: int | None = 4096,
                 max_pairs: int = 5000, problem_budget_s: float = 30.0, batch_budget_s: float = 120.0):
        if mode not in MODES:
            raise ValueError(f"Equivalence mode={mode!r}: use one of {', '.join(MODES)}")
        if not timeout_s > 0:
            raise ValueError(f"Equivalence timeout_s={timeout_s}: must be > 0 (seconds)")
        if workers < 1:
            raise ValueError(f"Equivalence workers={workers}: need at least 1 worker process")
        self.mode, self.timeout_s, self.workers = mode, float(timeout_s), int(workers)
        self.max_len, self.cache_size, self.worker_mem_mb = max_len, cache_size, worker_mem_mb
        self.max_pairs, self.problem_budget_s, self.batch_budget_s = max_pairs, problem_budget_s, batch_budget_s
        self.stats = EquivalenceStats()
        self.incidents: deque[tuple[str, str, str]] = deque(maxlen=1000)  # (kind, op, form[:200])
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._dead_forms: set[str] = set()  # timed out / crashed / huge: never given to a worker
        self._pool: _Pool | None = None
        self._finalizer = None

    # -- keys -----------------------------------------------------------------------------

    def key(self, ans: str | None) -> str | None:
        """The mode's string key of an answer; None for no answer (None or blank)."""
        if ans is None:
            return None
        s = ans.strip()
        if not s:
            return None
        if self.mode == "exact" or len(s) > self.max_len:  # too long: its own class anyway
            return s
        if self.mode == "moderate":  # the reference's reward equivalence (answers/moderate.py)
            return moderate_key(_normalize_cached(s) or s)
        return _normalize_cached(s) or s

    # -- public API -------------------------------------------------------------------------

    def classes(self, answers: Sequence[str | None]) -> list[int | None]:
        """Class id per answer of ONE problem: 0, 1, .. by first appearance; None for no answer."""
        return self.classes_batch([answers])[0]

    def classes_batch(self, problems: Sequence[Sequence[str | None]]) -> list[list[int | None]]:
        """`classes` for many problems at once; math-verify work of all of them runs in parallel."""
        keys = [[self.key(a) for a in answers] for answers in problems]
        forms = [list(dict.fromkeys(k for k in ks if k is not None)) for ks in keys]
        if self.mode == "math":
            roots = self._math_roots(forms)
        else:
            roots = [{f: f for f in fs} for fs in forms]
        out = []
        for ks, root in zip(keys, roots):
            ids: dict[str, int] = {}
            out.append([None if k is None else ids.setdefault(root[k], len(ids)) for k in ks])
        return out

    def equal(self, a: str | None, b: str | None) -> bool:
        """Whether two answers are equivalent under this mode (no answer equals nothing)."""
        ka, kb = self.key(a), self.key(b)
        if ka is None or kb is None:
            return False
        if ka == kb:
            return True
        if self.mode != "math":
            return False
        root = self._math_roots([[ka, kb]])[0]
        return root[ka] == root[kb]

    # -- math mode ----------------------------------------------------------------------------

    def _cached(self, a: str, b: str) -> bool | None:
        hit = self._cache.get((a, b))
        if hit is not None:
            self._cache.move_to_end((a, b))
        return hit

    def _remember(self, a: str, b: str, same: bool) -> None:
        self._cache[(a, b)] = same
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _math_roots(self, problems: list[list[str]]) -> list[dict[str, str]]:
        """Per problem, map each distinct normalized form to its class representative."""
        jobs: list[tuple[list[str], _UnionFind, _Job | None]] = []
        for fs in problems:
            fs = sorted(fs)  # canonical order: the work done does not depend on answer order
            uf = _UnionFind(len(fs))
            nums = [number_value(f) for f in fs]
            prints = [_fingerprint_cached(f) if len(f) <= self.max_len else None for f in fs]
            solo = set()
            for i, f in enumerate(fs):
                if len(f) > self.max_len:
                    self.stats.rejected_too_long += 1
                    self.incidents.append(("too_long", "filter", f[:200]))
                    solo.add(i)
                elif f in self._dead_forms:
                    solo.add(i)
            todo = []
            for i in range(len(fs)):
                for j in range(i + 1, len(fs)):
                    if i in solo or j in solo:
                        continue
                    if nums[i] is not None and nums[j] is not None:
                        self.stats.numeric += 1
                        if _numbers_equal(nums[i], nums[j]):
                            uf.union(i, j)
                        continue
                    if prints[i] and prints[j] and distinct(prints[i], prints[j]):
                        self.stats.numeric += 1
                        continue
                    hit = self._cached(fs[i], fs[j])
                    if hit is None:
                        todo.append((i, j))
                    else:
                        self.stats.cache_hits += 1
                        if hit:
                            uf.union(i, j)
            todo = [(i, j) for i, j in todo if uf.find(i) != uf.find(j)]
            job = None
            if len(todo) > self.max_pairs:
                self.stats.degraded += 1
                self.incidents.append(("budget", "pairs", f"{len(fs)} forms, {len(todo)} pairs"))
            elif todo:
                # forms without a numeric fingerprint first: they get explicit parse ops
                used = sorted({k for p in todo for k in p}, key=lambda k: (prints[k] is not None, k))
                local = {k: n for n, k in enumerate(used)}
                job = _Job([fs[k] for k in used], [(local[i], local[j]) for i, j in todo],
                           [prints[k] for k in used])
            jobs.append((fs, uf, job))
        work = [job for _, _, job in jobs if job is not None]
        if work:
            self._ensure_pool().run(work, self.problem_budget_s, self.batch_budget_s)
        roots = []
        for fs, uf, job in jobs:
            if job is not None and job.degraded:
                self.stats.degraded += 1
            elif job is not None:
                n = job.n_parse
                self.stats.unparsed += job.codes[:n].count(W.UNPARSED)
                self._dead_forms.update(job.forms[k] for k in job.dead)
                index = {f: i for i, f in enumerate(fs)}
                for (li, lj), code in zip(job.pairs, job.codes[n:]):
                    a, b = job.forms[li], job.forms[lj]
                    if code in (W.EQUAL, W.NOT_EQUAL, W.FAR, W.TEXT):
                        self._remember(a, b, code == W.EQUAL)
                    if code == W.EQUAL:
                        uf.union(index[a], index[b])
            roots.append({f: fs[uf.find(i)] for i, f in enumerate(fs)})
        return roots

    # -- lifecycle ------------------------------------------------------------------------------

    def _ensure_pool(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self.workers, self.timeout_s, self.worker_mem_mb, self.stats,
                               self.incidents)
            self._finalizer = weakref.finalize(self, _Pool.close, self._pool)
        return self._pool

    def warmup(self) -> None:
        """Start the worker processes now instead of on the first math-verify call."""
        if self.mode == "math":
            self._ensure_pool().run([_Job(["1"], [])])

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def __enter__(self) -> Equivalence:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Equivalence", "EquivalenceStats", "MODES", "normalize", "number_value"]
