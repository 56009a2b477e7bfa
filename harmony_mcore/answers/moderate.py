"""The `moderate` equivalence: the reference's reward equivalence, as a normal form.

The reference code rewards a response when its answer is "moderately" equivalent to the label
(`_ttrl_moderate_equiv` in its self_harmony.py; docs/answers.md): equal after Hendrycks normalisation, or numerically equal, or
equal after sympy simplification. `moderate_key` gives every answer a key so that these cases
share one (tests/test_answers_moderate.py):
- the cheap normal form of `normalize` (`\\frac12` = `\\frac{1}{2}`, `x=3` = `3`, `1,000` = `1000`,
  `\\dfrac`, `\\left(`, `\\text{B}` = `B`, units, degrees);
- plain numbers by exact value (`0.5` = `1/2` = `\\frac{1}{2}`);
- a simple expression (numbers, \\frac, \\sqrt, \\pi, powers, single-letter variables; see
  numeric.fingerprint) by its value: a rational value with a denominator up to 10^4 as that
  fraction (`2^{3}` = `8`), any other value rounded to 12 significant digits (`\\sqrt{2}` =
  `2^{1/2}`; `x+1` = `1+x`: same letters, and values that agree at the fixed sample point of
  the variables).
Words stay case-sensitive (`Yes` != `yes`, as in the reference). Unlike the reference's pairwise
test, a key makes the relation transitive, so it can form classes; it is also a little looser on
decimals (the reference equates 0.5 and \\frac{1}{2} but not 0.25 and \\frac{1}{4}).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from harmony_mcore.answers.numeric import CONSTANT, NAMED, fingerprint, number_value

_MAX_DENOMINATOR = 10**4
_COMMAND = re.compile(r"\\[A-Za-z]+")


def _fraction_text(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _value_text(z: complex) -> str:
    parts = [format(z.real + 0.0, ".12g")] + ([format(z.imag + 0.0, ".12g") + "i"] if z.imag else [])
    return "=" + ",".join(parts)


def moderate_key(form: str) -> str:
    """The key of an answer already in `normalize` form (see the module docstring)."""
    number = number_value(form)
    if number is not None:
        return _fraction_text(number[0])
    printed = fingerprint(form)
    if printed is None or len(printed[0]) != 1 or printed[1] == NAMED:
        return form
    z = printed[0][0]
    if not (math.isfinite(z.real) and math.isfinite(z.imag)):
        return form
    if printed[1] == CONSTANT and z.imag == 0:
        near = Fraction(z.real).limit_denominator(_MAX_DENOMINATOR)
        if abs(float(near) - z.real) <= 1e-12 * max(1.0, abs(z.real)):
            return _fraction_text(near)
        return _value_text(z)
    # The fingerprint reads symbols case-insensitively (as math-verify); the reference does not,
    # so the letters themselves are part of the key (`B` != `b`).
    letters = sorted(set(re.findall(r"[A-Za-z]", _COMMAND.sub("", form))))
    return "".join(letters) + _value_text(z)
