"""The views of a problem as chat messages, and their token ids.

View 0 is always the Solver. The other K-1 views are either reframe-and-solve views (the Reframer
rewrites the problem with one strategy and solves its rewrite in the same generation) or, with
static reframes, the Solver prompt on a reframing given in the data. Multiple-choice problems list
their options and ask for the letter in \\boxed{}.

Two prompt sets: `harmony` (ours, below) and `reference`, the public Self-Harmony code's solver
instruction and Reframer prompt, verbatim from files/reference_prompts.json (source and licence in
files/SOURCES.md), for reproducing its numbers: the "Before RL" baseline depends on the exact prompt."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from harmony_mcore.data.benchmarks import FILES, LETTERS, DataError, Problem

PROMPT_SETS = ("harmony", "reference")

Messages = list[dict[str, str]]

SOLVER_SYSTEM = ("Solve the following problem. Reason step by step, and put your final answer "
                 "within \\boxed{}.")
SOLVER_SYSTEM_CHOICE = ("Answer the following multiple-choice question. Reason step by step, then "
                        "choose exactly one option and put only its letter within \\boxed{}, e.g. \\boxed{B}.")

STRATEGIES: dict[str, str] = {
    "Concretize": "turn an abstract statement into a tangible story with concrete objects",
    "Generalize": "state the general pattern or formula of which this problem is one case",
    "Domain Shift": "move the problem into another field, e.g. a game, a program or physics",
    "Add Noise": "add a few irrelevant details that a careful solver must ignore",
    "Reverse": "describe the situation from its end and work backwards to the start",
    "Incremental Complexity": "pose a smaller warm-up instance first, then the full problem with its original numbers",
    "Focus on Constraints": "present the problem as a puzzle defined by its strict rules",
    "POV Shift": "tell the problem from the point of view of one of its objects or people",
}
MARKERS = ("STRATEGY:", "REWRITTEN PROBLEM:", "SOLUTION:")

_REFRAMER_SYSTEM = """You are the Reframer, a solver who understands a problem best by retelling it.
Work in two stages.
1. Reframe: do not solve the original problem yet. Rewrite it with one strategy from the list below. {nudge}
2. Solve: solve your rewritten problem step by step, in the spirit of your rewrite.

Strategies:
{strategies}

Rules:
- The rewritten problem must keep the original's mathematical content, quantities and relations, so that its answer is exactly the original answer.
- Use your own words; do not copy long phrases of the original.
- {answer_rule}

Write your response in exactly this order:
STRATEGY: <the strategy's name>
REWRITTEN PROBLEM: <your rewritten problem>
SOLUTION: <your step-by-step solution>
and end with the final answer in \\boxed{{}}."""

_FREE_CHOICE = "Pick the strategy that suits the problem."
_NUDGE = "Use the strategy {name}."
_ANSWER_RULE = "The final answer is the answer to the original problem: put it within \\boxed{}."
_ANSWER_RULE_CHOICE = ("The original is a multiple-choice question: keep its options, and put only the letter "
                       "of the correct original option within \\boxed{}, e.g. \\boxed{B}.")


def reframer_system(strategy: str | None = None, choice: bool = False) -> str:
    """The Reframer system prompt; `strategy` nudges it to one of STRATEGIES, None lets it choose."""
    if strategy is not None and strategy not in STRATEGIES:
        raise DataError(f"unknown reframing strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    listing = "\n".join(f"- {name}: {gloss}." for name, gloss in STRATEGIES.items())
    return _REFRAMER_SYSTEM.format(nudge=_NUDGE.format(name=strategy) if strategy else _FREE_CHOICE,
                                   strategies=listing, answer_rule=_ANSWER_RULE_CHOICE if choice else _ANSWER_RULE)


@functools.cache
def reference_prompts() -> dict[str, str]:
    """The reference code's system prompts {"solver": ..., "reframer": ...}, from the shipped file."""
    data = json.loads((FILES / "reference_prompts.json").read_text(encoding="utf-8"))
    return {"solver": data["solver_system"], "reframer": data["reframer_system"]}


def _check_prompts(prompts: str, problem: Problem) -> None:
    if prompts not in PROMPT_SETS:
        raise DataError(f"prompts={prompts!r}: use one of {', '.join(PROMPT_SETS)}")
    if prompts == "reference" and problem.is_choice:
        raise DataError(f"problem {problem.id!r} is multiple choice: the reference's math prompts do not fit it "
                        "(its MMLU-Pro prompt is not shipped); use data.prompts=harmony")


def user_text(problem: Problem, question: str | None = None) -> str:
    """The user turn: the question, then one option per line ("A. ...") for multiple choice."""
    text = problem.question if question is None else question
    if problem.choices:
        text += "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(problem.choices))
    return text


def solver_messages(problem: Problem, question: str | None = None, prompts: str = "harmony") -> Messages:
    _check_prompts(prompts, problem)
    if prompts == "reference":
        system = reference_prompts()["solver"]
    else:
        system = SOLVER_SYSTEM_CHOICE if problem.is_choice else SOLVER_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": user_text(problem, question)}]


def reframe_messages(problem: Problem, strategy: str | None = None, prompts: str = "harmony") -> Messages:
    _check_prompts(prompts, problem)
    if prompts == "reference":
        if strategy is not None:
            raise DataError("the reference's Reframer prompt cannot be nudged to a strategy, so its reframe "
                            "views would all be the same: use data.num_views=2 with data.prompts=reference")
        system = reference_prompts()["reframer"]
    else:
        system = reframer_system(strategy, problem.is_choice)
    return [{"role": "system", "content": system}, {"role": "user", "content": user_text(problem)}]


def static_messages(problem: Problem, prompts: str = "harmony") -> Messages:
    if not problem.reframed:
        raise DataError(f"problem {problem.id!r} of {problem.source!r} has no static reframing; use "
                        "data.views=reframe, or data that carries one (math-train-reframed, a `reframed` "
                        "column, or `harmony data reframe`)")
    return solver_messages(problem, problem.reframed, prompts)


def view_strategies(num_views: int) -> list[str | None]:
    """The strategy nudge of each reframe view: one reframe view chooses freely (as in the paper);
    with several, view j is nudged to the j-th strategy so the views differ."""
    if num_views - 1 <= 1:
        return [None] * (num_views - 1)
    names = list(STRATEGIES)
    return [names[j % len(names)] for j in range(num_views - 1)]


def view_messages(problem: Problem, views: str = "reframe", num_views: int = 2,
                  prompts: str = "harmony") -> list[Messages]:
    """The K = num_views message lists of one problem: [solver, view 1, ..., view K-1], in the
    prompt set `prompts` (harmony | reference)."""
    if views not in ("reframe", "static", "solver-only"):
        raise DataError(f"views={views!r}: use reframe, static or solver-only")
    if views == "solver-only":
        return [solver_messages(problem, prompts=prompts)] * num_views
    if views == "static":
        if num_views != 2:
            raise DataError(f"data.views=static has one reframing per problem: set data.num_views=2 (got {num_views})")
        return [solver_messages(problem, prompts=prompts), static_messages(problem, prompts)]
    return [solver_messages(problem, prompts=prompts)] + [reframe_messages(problem, s, prompts)
                                                          for s in view_strategies(num_views)]


@dataclass(frozen=True)
class Reframing:
    strategy: str | None  # a name from STRATEGIES (matched case-insensitively), or None
    rewritten: str | None
    solution: str | None


def parse_reframing(text: str) -> Reframing:
    """The parts of a reframe-and-solve response, by its markers (the last occurrence of each, in
    order; a part is None when its marker is missing or its content is empty)."""
    parts: dict[str, str | None] = {}
    for i, marker in enumerate(MARKERS):
        start = text.rfind(marker)
        if start < 0:
            parts[marker] = None
            continue
        start += len(marker)
        ends = [text.find(m, start) for m in MARKERS[i + 1:]]
        end = min([e for e in ends if e >= 0], default=len(text))
        parts[marker] = text[start:end].strip() or None
    raw = parts["STRATEGY:"]
    strategy = None
    if raw:
        first = raw.splitlines()[0].strip(" *.:-").lower()
        strategy = next((name for name in STRATEGIES if first.startswith(name.lower())), None)
    return Reframing(strategy, parts["REWRITTEN PROBLEM:"], parts["SOLUTION:"])


# ---- tokenisation ----

def render(tokenizer: Any, messages: Messages) -> str:
    """The prompt text: the tokenizer's chat template with the generation prompt, or a plain
    "System:/User:/Assistant:" template for tokenizers without one (tiny test tokenizers)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts + ["Assistant:"])


def encode(tokenizer: Any, messages: Messages) -> list[int]:
    # Templates carry their own special tokens; add BOS only for the plain template.
    templated = bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(render(tokenizer, messages), add_special_tokens=not templated)["input_ids"])


@dataclass(frozen=True)
class Overlong:
    problem_id: str
    view: int
    tokens: int


@dataclass
class PromptSet:
    """Token ids per view of the problems whose every view fits, and the ones that did not."""
    problems: list[Problem]
    token_ids: list[list[list[int]]]  # [view][problem] -> ids
    overlong: list[Overlong] = field(default_factory=list)
    max_tokens: int | None = None

    def report(self) -> str:
        if not self.overlong:
            return f"{len(self.problems)} problems, all prompts within {self.max_tokens} tokens"
        ids = sorted({o.problem_id for o in self.overlong})
        shown = ", ".join(f"{o.problem_id} (view {o.view}: {o.tokens} tokens)" for o in self.overlong[:10])
        more = f" and {len(self.overlong) - 10} more" if len(self.overlong) > 10 else ""
        return (f"{len(ids)} problems excluded: a prompt exceeds {self.max_tokens} tokens "
                f"(raise rollout.max_prompt_tokens to keep them): {shown}{more}")


def build_prompts(problems: Sequence[Problem], tokenizer: Any, views: str = "reframe", num_views: int = 2,
                  max_tokens: int | None = None, prompts: str = "harmony") -> PromptSet:
    """Tokenise every view of every problem. A problem with any view longer than `max_tokens` is
    left out of `problems`/`token_ids` and listed in `overlong` (the caller logs `report()`)."""
    kept: list[Problem] = []
    ids: list[list[list[int]]] = [[] for _ in range(num_views)]
    overlong: list[Overlong] = []
    for problem in problems:
        encoded = [encode(tokenizer, m) for m in view_messages(problem, views, num_views, prompts)]
        too_long = [Overlong(problem.id, v, len(e)) for v, e in enumerate(encoded)
                    if max_tokens is not None and len(e) > max_tokens]
        if too_long:
            overlong += too_long
            continue
        kept.append(problem)
        for v, e in enumerate(encoded):
            ids[v].append(e)
    return PromptSet(kept, ids, overlong, max_tokens)
