"""Numeric fingerprints: the parent's LaTeX evaluator must agree with math-verify's own parse.

The pre-filter is only sound if `fingerprint(form)` is the value math-verify's parse of the
same form takes at our sample point; checked here on the real benchmark answers and on
generated expressions, in-process (no workers).
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from math_verify import parse

from harmony_mcore.answers import normalize
from harmony_mcore.answers._mv_worker import _prints
from harmony_mcore.answers.numeric import CONSTANT, NAMED, SYMBOLIC, distinct, fingerprint

from tests.support.datafiles import MATH500, QWEN_OUTPUTS


def _agrees(form):
    """Our print, if any, is math-verify's value: what it parses is never `distinct` from it.

    A form math-verify cannot parse at all equals only an identical string, so any print
    is safe for it; a parse we cannot print (a relation, a union) would be a disagreement.
    """
    mine = fingerprint(form)
    if mine is None:
        return True
    parsed = parse("\\boxed{" + form + "}", parsing_timeout=None)
    if not [p for p in parsed if not isinstance(p, str)]:
        return True
    theirs = _prints(parsed)
    return theirs is not None and all(not distinct(mine, t) for t in theirs)


@pytest.mark.parametrize(
    "form, values, kind",
    [
        ("3", (3,), CONSTANT),
        ("\\frac{\\sqrt{2}}{2}", (2**0.5 / 2,), CONSTANT),
        ("(\\frac{\\pi}{2},3)", (3.141592653589793 / 2, 3), CONSTANT),
        ("[0,\\infty)", (0, float("inf")), CONSTANT),
        ("10^{-3}", (0.001,), CONSTANT),
        ("-2^2", (-4,), CONSTANT),
    ],
)
def test_fingerprint_values(form, values, kind):
    got = fingerprint(form)
    assert got[1] == kind
    assert len(got[0]) == len(values)
    assert all(abs(a - b) < 1e-12 or a == b for a, b in zip(got[0], values))


@pytest.mark.parametrize("form", ["1/2x", "2\\frac{1}{2}", "Yes", "e", "3i", "2^10", "x+y=3", "1,5", "4t",
                                  "\\sqrt{-4}", "2^{300}", "2^3^4", "\\frac{1}{0}", "52_8", "(0,1)\\cup(2,3)",
                                  "[1,1]", "[2,1]", "(x,x)"])
def test_fingerprint_refuses_ambiguous_forms(form):
    assert fingerprint(form) is None


def test_distinct():
    one, two = fingerprint("1"), fingerprint("2")
    assert distinct(one, two) and not distinct(one, fingerprint("\\frac{2}{2}"))
    assert not distinct(fingerprint("\\frac{1}{3}"), fingerprint("0.333333"))  # math-verify rounds
    assert distinct(fingerprint("(1,2)"), fingerprint("3"))  # different lengths
    assert not distinct(fingerprint("(1,2)"), fingerprint("[1,2]"))  # left to math-verify
    assert fingerprint("x+1")[1] == SYMBOLIC and distinct(fingerprint("x+1"), fingerprint("y+1"))
    named = ((2.0 + 0j,), NAMED)
    assert not distinct(named, fingerprint("x")) and distinct(named, one)


def test_fingerprints_agree_with_math_verify_on_real_answers():
    with open(MATH500) as f:
        answers = [row["answer"] for row in json.load(f)]
    with open(QWEN_OUTPUTS) as f:
        answers += [p for row in map(json.loads, f) for p in row["pred"]]
    forms = sorted({normalize(a) for a in answers if a} - {""})
    printed = [f for f in forms if fingerprint(f) is not None]
    assert len(printed) > 250  # most real answers are simple enough
    assert [f for f in printed if not _agrees(f)] == []


# generated expressions in the evaluator's grammar
_atoms = st.one_of(
    st.integers(0, 50).map(str),
    st.sampled_from(["0.5", "2.25", "\\pi", "x", "y", "n", "A", "\\sqrt{2}", "\\sqrt{x}", "\\sqrt[3]{7}"]),
)


def _combine(children):
    two = st.tuples(children, children)
    return st.one_of(
        two.map(lambda p: f"{p[0]}+{p[1]}"),
        two.map(lambda p: f"{p[0]}-{p[1]}"),
        two.map(lambda p: f"{p[0]}\\cdot {p[1]}"),
        two.map(lambda p: f"\\frac{{{p[0]}}}{{{p[1]}}}"),
        two.map(lambda p: f"({p[0]})\\times({p[1]})"),
        st.tuples(children, st.integers(-3, 4)).map(lambda p: f"({p[0]})^{{{p[1]}}}"),
        children.map(lambda c: f"\\sqrt{{{c}}}"),
        children.map(lambda c: f"-({c})"),
        children.map(lambda c: f"2{c}" if not c[0].isdigit() and not c.startswith("\\frac") else c),
    )


_expressions = st.recursive(_atoms, _combine, max_leaves=5)
_answers = st.one_of(_expressions, st.lists(_expressions, min_size=2, max_size=3).map(lambda xs: "(" + ",".join(xs) + ")"))


@pytest.mark.slow  # sympy parses of random expressions: ~1 s each on a busy 2-core box
@settings(max_examples=150, deadline=None)
@given(_answers)
def test_fingerprints_agree_with_math_verify_on_generated(form):
    assert _agrees(normalize(form))
