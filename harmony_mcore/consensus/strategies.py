"""Consensus (pseudo-label) strategies as pure functions on equivalence-class ids.

Input for one problem: `views[k]` = the class id of every response of view k (0 = solver,
1.. = reframes), `None` for a response without an answer. N_k = len(views[k]) counts every
response, parsable or not, so unparsable answers are mass on "no answer" (as in the reference).

Every strategy returns a `Vote`: a label per view (the same label for the joint strategies,
one per view for `self` and `cross`), the score of each label and, per label, its count in each
view. Selection: argmax score among candidates with a positive score; ties -> larger pooled count
-> smallest class id. The reducer numbers a problem's classes in a fixed order of their answers
(consensus/reducer.py, `canonical_classes`), so a label depends on the answers only: never on the
row order, the number of ranks, or Python's hash order.
Formulas: docs/algorithm.md, "Consensus: the pseudo-label".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

Views = Sequence[Sequence[int | None]]

# Scores within this relative distance are a tie: K-view means summed in different orders
# differ in the last bits, and such noise must not beat the documented tie-break.
_TIE_RTOL = 1e-9


@dataclass(frozen=True)
class Vote:
    labels: tuple[int | None, ...]  # per view: its label (class id) or None
    scores: tuple[float | None, ...]  # per view: the score of its label
    counts: tuple[tuple[int, ...], ...]  # counts[v][k] = responses of view k in view v's label class

    @property
    def label(self) -> int | None:
        """The solver view's label (the shared label for the joint strategies)."""
        return self.labels[0]


def _tally(views: Views) -> list[Counter]:
    if len(views) == 0:
        raise ValueError("consensus needs at least one view (got none)")
    tallies = []
    for k, view in enumerate(views):
        for c in view:
            if c is not None and (not isinstance(c, int) or isinstance(c, bool)):
                raise TypeError(f"view {k}: class ids must be int or None, got {c!r}")
        tallies.append(Counter(c for c in view if c is not None))
    return tallies


def _pick(scores: dict[int, float], tiebreak: Counter) -> tuple[int | None, float | None]:
    eligible = {a: s for a, s in scores.items() if s > 0}
    if not eligible:
        return None, None
    best = max(eligible.values())
    tied = [a for a, s in eligible.items() if best - s <= _TIE_RTOL * best]
    label = min(tied, key=lambda a: (-tiebreak[a], a))
    return label, eligible[label]


def _vote(labels: list[int | None], scores: list[float | None], tallies: list[Counter]) -> Vote:
    counts = tuple(tuple(t[a] if a is not None else 0 for t in tallies) for a in labels)
    return Vote(tuple(labels), tuple(scores), counts)


def _joint(views: Views, score: Callable[[list[float]], float]) -> Vote:
    """One shared label from a score of the per-view shares p_k(a) = n_k(a) / N_k."""
    tallies = _tally(views)
    sizes = [len(v) for v in views]
    pooled = sum(tallies, Counter())
    scores = {a: score([t[a] / n if n else 0.0 for t, n in zip(tallies, sizes)]) for a in pooled}
    label, s = _pick(scores, pooled)
    return _vote([label] * len(views), [s] * len(views), tallies)


# ---- score functions of the per-view shares -------------------------------------------------

def harmonic_score(p: Sequence[float]) -> float:
    """K / sum_k 1/p_k; 0 as soon as one view never gave the answer."""
    if min(p) <= 0:
        return 0.0
    return len(p) / sum(1.0 / x for x in p)


def power_mean_score(p: Sequence[float], k: float) -> float:
    """(sum_k p_k^k / K)^(1/k); k=0 geometric, k=+-inf max/min; k<=0 with a zero share -> 0."""
    if k == math.inf:
        return max(p)
    if k == -math.inf or (k <= 0 and min(p) <= 0):
        return min(p) if k == -math.inf else 0.0
    if k == 0:
        return math.exp(sum(math.log(x) for x in p) / len(p))
    # Scale by the extreme share that keeps every term <= 1, so large |k| neither overflows
    # nor underflows to a wrong 0.
    m = max(p) if k > 0 else min(p)
    if m == 0:
        return 0.0
    return m * (sum((x / m) ** k for x in p) / len(p)) ** (1.0 / k)


def weighted_invariant_score(p: Sequence[float], pi: float) -> float:
    """p̄ - pi(1-pi)(p0-p1)^2 / p̄ with p̄ = pi p0 + (1-pi) p1 (two views only)."""
    if len(p) != 2:
        raise ValueError(f"weighted-invariant is defined for exactly 2 views (solver + one reframe), got "
                         f"K={len(p)}: use harmonic-mean or power-mean for K views")
    p0, p1 = p
    pbar = pi * p0 + (1 - pi) * p1
    if pbar <= 0:
        return 0.0
    # The same quantity expanded over the common denominator, so that at pi = 1/2 an answer
    # missing from one view scores exactly 0 (not rounding noise that would make it eligible).
    return ((2 * pi - 1) * (pi * p0 * p0 - (1 - pi) * p1 * p1) + 4 * pi * (1 - pi) * p0 * p1) / pbar


# ---- strategies ------------------------------------------------------------------------------

def harmonic_mean(views: Views) -> Vote:
    return _joint(views, harmonic_score)


def power_mean(views: Views, k: float | None = None, lam: float | None = None) -> Vote:
    return _joint(views, partial(power_mean_score, k=power_exponent(k, lam)))


def weighted_invariant(views: Views, pi: float = 0.5) -> Vote:
    if len(views) != 2:
        weighted_invariant_score([0.0] * len(views), pi)  # raises the explanatory error
    return _joint(views, partial(weighted_invariant_score, pi=pi))


def majority(views: Views) -> Vote:
    """Pooled votes of all views: score = sum_k n_k(a)."""
    tallies = _tally(views)
    pooled = sum(tallies, Counter())
    label, s = _pick({a: float(n) for a, n in pooled.items()}, pooled)
    return _vote([label] * len(views), [s] * len(views), tallies)


def ttrl(views: Views) -> Vote:
    """TTRL: majority of the solver view alone; every view gets that label."""
    tallies = _tally(views)
    label, s = _pick({a: float(n) for a, n in tallies[0].items()}, tallies[0])
    return _vote([label] * len(views), [s] * len(views), tallies)


def self_majority(views: Views) -> Vote:
    """Per-view TTRL: each view is labelled by its own majority."""
    tallies = _tally(views)
    picks = [_pick({a: float(n) for a, n in t.items()}, t) for t in tallies]
    return _vote([p[0] for p in picks], [p[1] for p in picks], tallies)


def cross(views: Views) -> Vote:
    """Co-Reward: view k is labelled by the pooled majority of the other views."""
    tallies = _tally(views)
    picks = []
    for k in range(len(views)):
        others = sum((t for j, t in enumerate(tallies) if j != k), Counter())
        picks.append(_pick({a: float(n) for a, n in others.items()}, others))
    return _vote([p[0] for p in picks], [p[1] for p in picks], tallies)


StrategyFn = Callable[..., Vote]

STRATEGIES: dict[str, StrategyFn] = {
    "harmonic-mean": harmonic_mean,
    "power-mean": power_mean,
    "weighted-invariant": weighted_invariant,
    "majority": majority,
    "ttrl": ttrl,
    "self": self_majority,
    "cross": cross,
}

# Strategies whose views may get different labels.
PER_VIEW = frozenset({"self", "cross"})


def power_exponent(k: float | None, lam: float | None) -> float:
    """The power-mean exponent from k or from lambda (k = 1 - lambda); exactly one is needed."""
    if (k is None) == (lam is None):
        raise ValueError("power-mean needs exactly one of k (exponent) or lambda (k = 1 - lambda), "
                         "e.g. consensus.power_k=-1 (harmonic) or consensus.power_lambda=2")
    exponent = float(k) if k is not None else 1.0 - float(lam)
    if math.isnan(exponent):
        raise ValueError("power-mean exponent is NaN: give a number for k or lambda")
    return exponent


def gate(vote: Vote, min_score: float | None) -> Vote:
    """Drop every label whose score is below `min_score` (None = no gate)."""
    if min_score is None:
        return vote
    keep = [s is not None and s >= min_score for s in vote.scores]
    k = len(vote.counts[0]) if vote.counts else 0
    return Vote(tuple(a if ok else None for a, ok in zip(vote.labels, keep)),
                tuple(s if ok else None for s, ok in zip(vote.scores, keep)),
                tuple(c if ok else (0,) * k for c, ok in zip(vote.counts, keep)))


def get_strategy(name: str, *, k: float | None = None, lam: float | None = None, pi: float = 0.5,
                 min_score: float | None = None) -> Callable[[Views], Vote]:
    """The strategy `name` with its parameters bound: a function views -> Vote.

    Parameters a strategy does not use are ignored, so a whole config section can be passed.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown consensus strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    fn = STRATEGIES[name]
    if name == "power-mean":
        fn = partial(fn, k=power_exponent(k, lam))
    elif name == "weighted-invariant":
        if not 0.0 <= pi <= 1.0:
            raise ValueError(f"weighted-invariant needs pi in [0, 1], got {pi}")
        fn = partial(fn, pi=pi)
    if min_score is None:
        return fn
    return lambda views: gate(fn(views), min_score)


def strategy_from_config(cfg, name: str | None = None) -> Callable[[Views], Vote]:
    """Bind a strategy from a `ConsensusConfig` (`name` overrides cfg.strategy, e.g. in warmup)."""
    return get_strategy(name or cfg.strategy, k=cfg.power_k, lam=cfg.power_lambda, pi=cfg.pi,
                        min_score=cfg.min_score)
