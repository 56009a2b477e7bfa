import itertools
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_mcore.estimators import maj_at_k, pass_at_k


def brute_pass(correct_flags, k):
    subsets = list(itertools.combinations(correct_flags, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_maj(classes, correct, k):
    total = Fraction(0)
    subsets = list(itertools.combinations(classes, k))
    for s in subsets:
        votes = Counter(a for a in s if a is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += Fraction(sum(correct[a] for a in winners), len(winners))
    return float(total / len(subsets))


@given(st.lists(st.booleans(), min_size=1, max_size=10), st.data())
@settings(max_examples=60, deadline=None)
def test_pass_at_k_matches_enumeration(flags, data):
    k = data.draw(st.integers(1, len(flags)))
    assert pass_at_k(len(flags), sum(flags), k) == pytest.approx(brute_pass(flags, k), abs=1e-12)


@given(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=1, max_size=10), st.data())
@settings(max_examples=120, deadline=None)
def test_maj_at_k_matches_enumeration(classes, data):
    k = data.draw(st.integers(1, len(classes)))
    correct = {a: data.draw(st.booleans()) for a in range(4)}
    maj = maj_at_k(classes, correct, k)
    assert maj == pytest.approx(brute_maj(classes, correct, k), abs=1e-12)
    c = sum(a is not None and correct[a] for a in classes)
    assert maj <= pass_at_k(len(classes), c, k) + 1e-12  # a correct majority needs a correct sample
    assert maj_at_k(classes, correct, 1) == pytest.approx(c / len(classes))  # one sample: its accuracy


def test_hand_cases():
    # 4 samples: A A B None, A correct. maj@1 = P(pick an A) = 1/2; maj@4: A wins 2:1.
    classes, correct = [0, 0, 1, None], [True, False]
    assert maj_at_k(classes, correct, 1) == pytest.approx(0.5)
    assert maj_at_k(classes, correct, 4) == 1.0
    # maj@2: pairs {AA}=1, {AB}x2 tie=1/2 each, {A,None}x2=1, {B,None}=0 -> (1 + 1 + 2) / 6
    assert maj_at_k(classes, correct, 2) == pytest.approx(4 / 6)
    assert maj_at_k([None, None], {}, 2) == 0.0
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 1, 16) == 1.0 and pass_at_k(4, 1, 1) == 0.25
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        maj_at_k([0], [True], 2)


def test_maj_at_k_is_exact_and_fast_for_many_samples_and_classes():
    import time

    # nine classes of 7 samples each: by symmetry each class wins (ties split evenly) 1/9 of the time
    classes = [i % 9 for i in range(63)]
    t0 = time.perf_counter()
    value = maj_at_k(classes, {a: a == 0 for a in range(9)}, 32)
    assert time.perf_counter() - t0 < 5  # C(63, 32) ~ 9e17 subsets: enumeration would never finish
    assert value == pytest.approx(1 / 9, abs=1e-12)
    assert maj_at_k(classes, {a: a < 3 for a in range(9)}, 32) == pytest.approx(3 / 9, abs=1e-12)
