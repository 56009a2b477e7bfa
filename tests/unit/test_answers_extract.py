"""Answer extraction: hand-worked cases, incl. examples of the reference's `last_boxed_only_string` (docs/answers.md)."""

import pytest

from harmony_mcore.answers import extract_boxed, extract_choice


@pytest.mark.parametrize(
    "text, expected",
    [
        # the reference's extraction cases
        ("answer \\boxed 5$ done", "5"),
        ("\\boxed{3} then \\boxed 4", "4"),
        ("\\boxed{ 7 }", "7"),  # the reference keeps " 7 "; we strip
        ("\\fbox{12}", "12"),  # the reference returns '' here
        # last box wins, nested braces are balanced
        ("first \\boxed{1} and finally \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("$\\boxed{\\text{(C)}}$", "\\text{(C)}"),
        ("\\boxed{a}\n\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed {42}", "42"),
        ("\\boxed x\nmore text", "x"),
        # nothing usable
        ("no box here", None),
        ("", None),
        (None, None),
        ("\\boxed{}", None),
        ("\\boxed{   }", None),
        ("\\boxed{\\frac{1}{2}", None),  # unbalanced
        ("\\boxed{1} then \\boxed{2", None),  # the last box is unbalanced
        ("\\boxedsymbol{3}", None),  # another macro
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_long_text_is_linear():
    text = "x" * 200_000 + "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}"
    assert extract_boxed(text) == "{" * 50_000 + "1" + "}" * 50_000
    assert extract_boxed("\\boxed{" * 20_000) is None


@pytest.mark.parametrize(
    "answer, n, expected",
    [
        ("B", 10, "B"),
        ("(B)", 10, "B"),
        ("\\text{B}", 10, "B"),
        ("\\textbf{(D)}", 10, "D"),
        ("B.", 10, "B"),
        ("B) foo", 10, "B"),
        ("(B) 12", 10, "B"),
        ("the answer is B", 10, "B"),
        ("The answer is: (C)", 10, "C"),
        ("Option E", 10, "E"),
        ("b", 10, "B"),
        ("$J$", 10, "J"),
        ("K", 10, None),  # beyond 10 options
        ("E", 4, None),
        ("I think B", 4, "B"),  # I is not an option among A-D
        ("I think B", 10, None),  # I and B both valid: ambiguous
        ("A and B", 10, None),
        ("42", 10, None),
        ("", 10, None),
        (None, 10, None),
    ],
)
def test_extract_choice(answer, n, expected):
    assert extract_choice(answer, n) == expected


def test_extract_choice_bad_option_count():
    with pytest.raises(ValueError, match="num_options"):
        extract_choice("A", 0)
    with pytest.raises(ValueError, match="num_options"):
        extract_choice("A", 27)
