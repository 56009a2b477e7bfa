"""The `moderate` equivalence (the reference's reward equivalence) on the reference's own examples
(docs/answers.md), and the reference preset's path: exact votes, moderate rewards."""

import pytest

from harmony_mcore.answers import Equivalence
from harmony_mcore.consensus.reducer import Record, compute_batch
from harmony_mcore.consensus.strategies import get_strategy

MODERATE = Equivalence("moderate")


@pytest.mark.parametrize("a,b,same", [
    # the and the reference's verified cases
    ("\\frac12", "\\frac{1}{2}", True),
    ("x=3", "3", True),
    ("1,000", "1000", True),
    ("\\sqrt{2}", "2^{1/2}", True),
    ("Yes", "yes", False),
    ("\\text{B}", "B", True),
    ("(0,1]", "(0,1)", False),
    # Hendrycks normalisation and numbers
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("90^\\circ", "90", True),
    ("2^{3}", "8", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("x+1", "1+x", True),
    # what stays apart
    ("B", "b", False),
    ("-3", "3", False),
    ("\\pi", "3.14159265358979", False),
    ("\\sqrt{2}", "1.4142135623731", False),
    ("x+1", "x+2", False),
    ("0.333333", "\\frac{1}{3}", False),
])
def test_moderate_cases(a, b, same):
    assert MODERATE.equal(a, b) is same
    assert MODERATE.equal(b, a) is same


def test_moderate_is_looser_than_normalized_and_classes_do_not_depend_on_order():
    answers = ["0.5", "\\frac12", "1/2", "\\sqrt{2}", "2^{1/2}", "7", None]
    normalized, moderate = Equivalence("normalized").classes(answers), MODERATE.classes(answers)
    for i in range(len(answers)):
        for j in range(len(answers)):
            if normalized[i] is not None and normalized[i] == normalized[j]:
                assert moderate[i] == moderate[j]
    assert moderate == [0, 0, 0, 1, 1, 2, None]
    rev = MODERATE.classes(answers[::-1])[::-1]
    assert [rev.index(c) if c is not None else None for c in rev] == [
        moderate.index(c) if c is not None else None for c in moderate]


def test_reference_path_exact_votes_moderate_rewards():
    """Votes on exact strings split \\frac12 and \\frac{1}{2}; the label \\frac12 (2 + 1 votes)
    then rewards every moderately equivalent answer: \\frac{1}{2} and 0.5 too, but not 2."""
    rows = [Record("a", 0, "\\frac12"), Record("a", 0, "\\frac12"), Record("a", 0, "0.5"), Record("a", 0, "2"),
            Record("a", 1, "\\frac12"), Record("a", 1, "\\frac{1}{2}"), Record("a", 1, "2")]
    res = compute_batch(rows, equivalence=Equivalence("exact"), strategy=get_strategy("harmonic-mean"),
                        reward_equivalence=MODERATE)
    assert res.problems[0].label_answers == ("\\frac12", "\\frac12")
    assert res.rewards == [1, 1, 1, 0, 1, 1, 0]
