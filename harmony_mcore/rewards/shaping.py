"""Shaping terms: the reframe-view format penalty and the sharpness objective.

Both come from the reference code, which defines them but never applies them (docs/algorithm.md,
"Rewards"). A shaping term must never weigh like a
correctness flip: the format penalty is added to the normalised advantage (algo/loss.py,
`shaped_advantages`), where it moves a response's advantage by at most its coefficient; added to
the reward, GRPO's std normalisation would blow it up to a full-size advantage in any group whose
correctness is constant. The sharpness term is a per-group constant, which the normalisation cancels.
"""

from __future__ import annotations

import re

# The reframe-and-solve output markers, in the order the prompt asks for them.
MARKERS = ("STRATEGY:", "REWRITTEN PROBLEM:", "SOLUTION:")
_MARKER_RE = re.compile("|".join(re.escape(m) for m in MARKERS), re.IGNORECASE)
# Filler a model writes instead of content: dots, dashes, ellipses, or a bracketed template
# such as "[rewritten problem]" or "<strategy name>".
_FILLER_RE = re.compile(r"[\s.\-_*…·]*|\[[^\[\]\n]*\]|<[^<>\n]*>")


def _has_content(text: str) -> bool:
    text = text.strip().strip("*#_ \t\n")  # markdown decoration around a marker is not content
    return bool(text) and "placeholder" not in text.lower() and not _FILLER_RE.fullmatch(text)


def format_score(response: str) -> float:
    """f in [0, 1]: the share of the three markers present with real content.

    A marker's content is the text up to the next marker (or the end); the first occurrence of
    each marker counts. The strategy must name something on its first non-empty line.
    """
    sections: dict[str, str] = {}
    hits = list(_MARKER_RE.finditer(response))
    for i, m in enumerate(hits):
        end = hits[i + 1].start() if i + 1 < len(hits) else len(response)
        sections.setdefault(m.group(0).upper(), response[m.end():end])
    first_line = next((ln for ln in sections.get("STRATEGY:", "").splitlines() if ln.strip()), "")
    present = [_has_content(first_line)] + [_has_content(sections.get(m, "")) for m in MARKERS[1:]]
    return sum(present) / len(MARKERS)


def format_penalty(f: float, coef: float) -> float:
    """-c (1 - f): the offset added to a reframe response's normalised advantage."""
    return -coef * (1.0 - f)


def sharpness_penalty(matches: int, n: int) -> float:
    """min(1, (c - n/2)^2 / (n^2/4)): 0 when half of the n rollouts match the label, 1 at 0 or n.

    The reference's helper with its target 4 of 8 rollouts generalised to n. Within one GRPO group
    it is a constant, so it shifts the rewards but not the advantages (tests/unit/test_rewards.py).
    """
    if n <= 0:
        return 0.0
    return min(1.0, (matches - n / 2) ** 2 / (n * n / 4))
