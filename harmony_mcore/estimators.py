"""Unbiased estimators of pass@k and maj@k from n samples of one problem.

Both are the exact expectation over the C(n, k) subsets of k samples drawn without replacement
from the n we have, computed in closed form (no enumeration, no bootstrap):

- pass@k: some sample of the subset is correct; 1 - C(n-c, k) / C(n, k) with c correct samples.
- maj@k: the largest equivalence class of the subset is correct. Samples without an answer do
  not vote; a subset with no vote scores 0; a tie between t top classes scores (number of correct
  classes among them) / t, the expectation of a uniform tie-break.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from math import comb
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return 1.0 - comb(n - c, k) / comb(n, k)


def maj_at_k(classes: Sequence[int | None], correct: dict[int, bool] | Sequence[bool], k: int) -> float:
    """`classes[i]`: equivalence class of sample i (None = no answer); `correct[a]`: whether class
    a is the ground truth's class (a dict, or a list indexed by class id)."""
    n = len(classes)
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n (n={n}, k={k})")
    counts = Counter(a for a in classes if a is not None)
    none = n - sum(counts.values())
    total = Fraction(0)
    for g, m_g in counts.items():
        if not correct[g]:
            continue
        others = [m for a, m in counts.items() if a != g]
        for t in range(1, min(m_g, k) + 1):
            # ways[s][e]: choices from the other classes with s samples in all, each class < t or = t,
            # e of them tied with g at exactly t.
            ways: dict[tuple[int, int], int] = {(0, 0): 1}
            for m in others:
                step: dict[tuple[int, int], int] = {}
                for (s, e), w in ways.items():
                    for x in range(min(m, t, k - t - s) + 1):
                        key = (s + x, e + (x == t))
                        step[key] = step.get(key, 0) + w * comb(m, x)
                ways = step
            for (s, e), w in ways.items():
                rest = k - t - s
                if rest <= none:
                    total += Fraction(comb(m_g, t) * w * comb(none, rest), e + 1)
    return float(total / comb(n, k))
