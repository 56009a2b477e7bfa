"""Numeric fingerprints of simple LaTeX answers, to skip math-verify on pairs that differ.

`fingerprint(form)` evaluates a normalised answer built only from numbers, \\frac, \\sqrt,
\\pi, + - * / ^, parentheses and single-letter variables (each bound to a fixed real value,
as math-verify's parser treats symbols as real), or a bracketed list of such items, and
returns its sorted values. Anything else -- words, e and i, functions, relations, subscripts,
ambiguous juxtapositions such as `1/2x` or `2\\frac{1}{2}` -- gives None and is left to
math-verify. Two answers whose fingerprints are `far_apart` cannot be equal under
math-verify (its float tolerance is 6 decimals, ours 1e-4 relative), so the pair is
decided without a worker. The agreement of these values with math-verify's own parse is
tested on the benchmark answers (tests/test_answers_numeric.py).
"""

from __future__ import annotations

import cmath
import math
import re
from fractions import Fraction

_TOKEN = re.compile(r"\s+|\d+\.\d*|\.\d+|\d+|\\[A-Za-z]+|\\[{}]|.", re.S)
_WORD = re.compile(r"(?<!\\)(?<![A-Za-z])[A-Za-z]{2}")  # two letters in a row, not a command
# math-verify lower-cases symbol names (so A == a) and reads e, i as constants: skip those.
VARIABLES = {c: 0.5 + ((ord(c.lower()) * 0.6180339887498949) % 1.0) for c in
              "abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ"}
# math-verify strips a trailing unit letter after a number ("4t" -> 4, "3 m" -> 3).
_TRAILING_UNIT = re.compile(r"[\d}\s][tshoclgmdTSHOCLGMD](?:e?s)?\s*$")
_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}
INT_FORM = re.compile(r"^([-+]?)(\d+)$")
DEC_FORM = re.compile(r"^([-+]?)(\d*)\.(\d+)$|^([-+]?)(\d+)\.$")
FRAC_FORM = re.compile(r"^([-+]?)\\frac\{([-+]?\d+)\}\{([-+]?\d+)\}$|^([-+]?)(\d+)/(\d+)$")
MAX_NUMBER_DIGITS = 400  # beyond this a "number" is treated as text (int() cost, 4300-digit cap)
_MAX_ABS = 1e100
_MAX_EXPONENT = 200


class _Fail(Exception):
    pass


def _maybe_degenerate(items: list[complex], brackets: str) -> bool:
    """Whether math-verify may read a pair as an empty or one-point interval: `[1,1]` is {1},
    `[2,1]` and `(x,x)` are EmptySet; `(2,1)` and `(1,1)` stay tuples."""
    a, b = items
    if a.imag != 0 or b.imag != 0:
        return True
    gap = b.real - a.real
    return abs(gap) <= 1e-4 * max(1.0, min(abs(a), abs(b))) or (gap < 0 and brackets != "()")


class _Parser:
    def __init__(self, tokens: list[str]):
        self.t, self.k = tokens, 0
        self.symbolic = False  # a variable was used

    def peek(self) -> str | None:
        return self.t[self.k] if self.k < len(self.t) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Fail
        self.k += 1
        return tok

    # top := expr | open expr (',' expr)+ close   (a bare "1,5" may be read as 1.5 or 15)
    def top(self) -> tuple[complex, ...]:
        tok = self.peek()
        if tok in _OPEN:
            start = self.k
            self.take()
            items = [self.expr()]
            while self.peek() == ",":
                self.take()
                items.append(self.expr())
            if self.peek() in _OPEN.values() and self.k == len(self.t) - 1 and len(items) > 1:
                close = self.take()
                if len(items) == 2 and tok != "\\{" and _maybe_degenerate(items, tok + close):
                    raise _Fail
                return tuple(items)
            self.k = start  # a parenthesised scalar such as (1+2)/3: parse as an expression
        value = self.expr()
        if self.peek() is not None:
            raise _Fail
        return (value,)

    def expr(self) -> complex:
        value = self.term()
        while self.peek() in ("+", "-"):
            sign = 1 if self.take() == "+" else -1
            value += sign * self.term()
        return value

    def term(self) -> complex:
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                d = self.power()
                if d == 0 or self._starts_atom(self.peek()):  # `1/2x` is ambiguous
                    raise _Fail
                value /= d
            elif self._starts_atom(tok):
                if tok[0].isdigit() or tok in ("\\frac", "("):  # `2 3`, `2\frac12`, `(a)(b)`
                    raise _Fail
                value *= self.power()
            else:
                return value

    @staticmethod
    def _starts_atom(tok: str | None) -> bool:
        return tok is not None and (tok[0].isdigit() or tok[0] == "." or tok in VARIABLES
                                    or tok in ("\\pi", "\\sqrt", "\\frac", "(", "{"))

    def unary(self) -> complex:
        if self.peek() in ("-", "+"):
            return (-1 if self.take() == "-" else 1) * self.unary()
        return self.power()

    def power(self) -> complex:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exp = self.group() if self.peek() == "{" else self.atom_single()
        if self.peek() == "^":  # a^b^c: associativity differs between parsers
            raise _Fail
        if abs(exp) > _MAX_EXPONENT or (base == 0 and exp.real <= 0):
            raise _Fail
        if exp.imag == 0 and exp.real != int(exp.real) and base.imag == 0 and base.real < 0:
            raise _Fail  # real vs principal roots of negatives differ between conventions
        return base**exp

    def atom_single(self) -> complex:
        """An unbraced exponent: one digit, one letter or \\pi."""
        tok = self.take()
        if tok.isdigit() and len(tok) == 1:
            return complex(int(tok))
        return self.named(tok)

    def named(self, tok: str) -> complex:
        """A variable or \\pi."""
        if tok in VARIABLES:
            self.symbolic = True
            return complex(VARIABLES[tok])
        if tok == "\\pi":
            return complex(math.pi)
        raise _Fail

    def group(self) -> complex:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def atom(self) -> complex:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return complex(float(tok))
        if tok in VARIABLES or tok == "\\pi":
            return self.named(tok)
        if tok == "\\infty":
            return complex(math.inf)
        if tok == "\\frac":
            num = self.group()
            den = self.group()
            if den == 0:
                raise _Fail
            return num / den
        if tok == "\\sqrt":
            degree = None
            if self.peek() == "[":
                self.take()
                degree = self.expr()
                self.take("]")
            radicand = self.group()
            if radicand.imag == 0 and radicand.real < 0:
                raise _Fail
            return cmath.sqrt(radicand) if degree is None else radicand ** (1 / degree)
        if tok == "(":
            value = self.expr()
            self.take(")")
            return value
        if tok == "{":
            value = self.expr()
            self.take("}")
            return value
        raise _Fail


Print = tuple  # (sorted values: tuple[complex, ...], kind: CONSTANT | SYMBOLIC | NAMED)
CONSTANT, SYMBOLIC, NAMED = 0, 1, 2  # NAMED: has multi-letter symbols (worker parses only)


def symbol_value(name: str) -> float:
    """The real value a symbol is evaluated at (same in every process; case-insensitive)."""
    if name in VARIABLES:
        return VARIABLES[name]
    h = int.from_bytes(name.lower().encode()[:8].ljust(8, b"\0"), "little")
    return 0.5 + (h * 0.6180339887498949) % 1.0


def fingerprint(form: str) -> Print | None:
    """(sorted values, kind) of a simple normalised answer (a number, an expression in
    single-letter variables, or a bracketed list of them), else None."""
    if len(form) > 200 or not form or _WORD.search(form) or _TRAILING_UNIT.search(form):
        return None
    tokens = [tok for tok in _TOKEN.findall(form) if not tok.isspace()]
    parser = _Parser(tokens)
    try:
        values = parser.top()
    except (_Fail, ZeroDivisionError, OverflowError, ValueError):
        return None
    return make_print(values, SYMBOLIC if parser.symbolic else CONSTANT)


def make_print(values, kind: int) -> Print | None:
    for v in values:
        if math.isnan(v.real) or math.isnan(v.imag) or (math.isfinite(abs(v)) and abs(v) > _MAX_ABS):
            return None
    return tuple(sorted(values, key=lambda v: (v.real, v.imag))), kind


def distinct(a: Print, b: Print) -> bool:
    """True if math-verify cannot find the two answers equal.

    It equates an expression with a constant only through an identity (so their values
    agree at our sample point) and two single-letter-symbol expressions likewise; between
    expressions with multi-letter symbols it also compares concatenated symbol names, so
    those are never called distinct here.
    """
    if (a[1] == NAMED and b[1] != CONSTANT) or (b[1] == NAMED and a[1] != CONSTANT):
        return False
    return far_apart(a[0], b[0])


def far_apart(a: tuple[complex, ...], b: tuple[complex, ...]) -> bool:
    """True if no equality math-verify could find between the two: a different number of
    items, or some item differing by more than 1e-4 relative (infinities never count)."""
    if len(a) != len(b):
        return True
    for x, y in zip(a, b):
        if math.isinf(abs(x)) or math.isinf(abs(y)):
            if x != y and not (math.isinf(abs(x)) and math.isinf(abs(y))):
                return True
            continue
        if abs(x - y) > 1e-4 * max(1.0, abs(x), abs(y)):
            return True
    return False


def number_value(form: str) -> tuple[Fraction, bool] | None:
    """(value, is_decimal) of a canonical number form from `normalize`, else None."""
    if len(form) > MAX_NUMBER_DIGITS:
        return None
    if INT_FORM.match(form):
        return Fraction(int(form)), False
    if DEC_FORM.match(form):
        return Fraction(form), True
    m = FRAC_FORM.match(form)
    if m and m.group(2) is not None and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return (-v if m.group(1) == "-" else v), False
    return None
