"""Reward sources, registered by name, and the per-problem reward assembly.

A source maps one problem's rollouts (class ids per view, and whatever else it needs) and its
consensus `Vote` to a reward per response. The trainer picks a source by name
(`algorithm.reward`); a source that scores a response by a statistic of the policy's own
next-token distribution names it in `token_stat`: the policy computes it on its (vocab-parallel)
logits before the reducer runs, and the response's value is the signed mean over its tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from harmony_mcore.consensus.strategies import Vote, harmonic_score
from harmony_mcore.rewards.shaping import format_penalty, sharpness_penalty

PerView = list[list]  # [view][response]


@dataclass
class ProblemRollouts:
    """One problem's responses, per view (0 = solver), in a fixed row order."""

    classes: list[list[int | None]]  # equivalence class of each response's answer (None = no answer)
    gt_correct: list[list[bool]] | None = None  # answer equals the ground truth
    format_scores: list[list[float | None]] | None = None  # reframe markers with content, f in [0, 1]
    values: list[list[float | None]] | None = None  # per-response value from the policy (token_stat)


@dataclass(frozen=True)
class RewardOptions:
    reframe_reward: bool = True  # augmented GRPO reward on the reframe views
    soft_reframe_reward: bool = False  # rank-based reward on the reframe views (reference's soft mode)
    soft_top_k: int = 8
    format_penalty: float = 0.0
    sharpness_coef: float = 0.0

    @classmethod
    def from_config(cls, algo) -> "RewardOptions":
        return cls(reframe_reward=algo.reframe_reward, soft_reframe_reward=algo.soft_reframe_reward,
                   soft_top_k=algo.soft_top_k, format_penalty=algo.format_penalty,
                   sharpness_coef=algo.sharpness_coef)


def view_has_policy_gradient(view: int, opts: RewardOptions) -> bool:
    """False for a reframe view whose augmented reward is off: it then contributes only its KL term."""
    return view == 0 or opts.reframe_reward


def pseudo_label_rewards(p: ProblemRollouts, vote: Vote, opts: RewardOptions) -> PerView:
    """1 if the response's class is its view's label, else 0; no label -> 0."""
    out = []
    for v, classes in enumerate(p.classes):
        label = vote.labels[v]
        if v > 0 and not opts.reframe_reward:
            out.append([0.0] * len(classes))
        elif v > 0 and opts.soft_reframe_reward:
            out.append(soft_rank_rewards(p.classes, classes, opts.soft_top_k))
        else:
            out.append([1.0 if label is not None and c == label else 0.0 for c in classes])
    return out


def soft_rank_rewards(views: list[list[int | None]], classes: list[int | None], top_k: int = 8) -> list[float]:
    """The reference's soft reframe reward: 1 - rank/(top_k - 1) for the top_k candidates, else 0.

    Candidates are every answer class of the problem, ranked by their K-view harmonic-mean score
    (ties as in the consensus: larger pooled count, then smaller id), so rank 0 is the harmonic-mean
    label when there is one. As in the reference, answers seen in one view only are ranked too
    (after every answer seen in all views), except when the solver view has no answer at all:
    then every response gets 0, as in the reference (its score divides by the solver view's number
    of answers, so nothing is ranked).
    """
    if all(c is None for c in views[0]):
        return [0.0] * len(classes)
    tallies = [Counter(c for c in v if c is not None) for v in views]
    pooled = sum(tallies, Counter())
    score = {a: harmonic_score([t[a] / len(v) if v else 0.0 for t, v in zip(tallies, views)]) for a in pooled}
    ranking = sorted(pooled, key=lambda a: (-score[a], -pooled[a], a))
    rank = {a: i for i, a in enumerate(ranking)}
    step = 1.0 / (top_k - 1) if top_k > 1 else 1.0
    return [max(0.0, 1.0 - rank[c] * step) if c is not None and rank[c] < top_k else 0.0 for c in classes]


def gt_rewards(p: ProblemRollouts, vote: Vote, opts: RewardOptions) -> PerView:
    """1 if the answer equals the ground truth (the upper-bound baseline)."""
    if p.gt_correct is None:
        raise ValueError("algorithm.reward=gt needs a ground truth for every problem: use a benchmark "
                         "with answers, or a label-free reward (pseudo-label, intuitor, rent)")
    return [[1.0 if ok else 0.0 for ok in view] for view in p.gt_correct]


def value_rewards(p: ProblemRollouts, vote: Vote, opts: RewardOptions) -> PerView:
    """The per-response value the policy computed for the source's token_stat."""
    if p.values is None or any(x is None for view in p.values for x in view):
        raise ValueError("this reward needs a per-response value from the policy (Record.value): the signed "
                         "mean of the source's token_stat over every response's tokens")
    return [[float(x) for x in view] for view in p.values]


@dataclass(frozen=True)
class TokenStat:
    """A per-token statistic of the policy's next-token distribution, by its name in
    `harmony_mcore.parallel.vocab_parallel` ('entropy' H(p), 'self_certainty' logsumexp(z) - mean(z)).
    A response's value is `sign` times the statistic's mean over the response's tokens."""

    name: str
    sign: float = 1.0


@dataclass(frozen=True)
class RewardSource:
    fn: Callable[[ProblemRollouts, Vote, RewardOptions], PerView]
    token_stat: TokenStat | None = None  # what the policy computes for `fn` (None: nothing)
    # Format penalty and sharpness shape pseudo-label rewards only; baselines stay unshaped.
    shaped: bool = False


REWARDS: dict[str, RewardSource] = {
    "pseudo-label": RewardSource(pseudo_label_rewards, shaped=True),
    "gt": RewardSource(gt_rewards),
    "intuitor": RewardSource(value_rewards, token_stat=TokenStat("self_certainty")),  # KL(uniform || p) + log V
    "rent": RewardSource(value_rewards, token_stat=TokenStat("entropy", sign=-1.0)),  # confident tokens score higher
}


def get_reward(name: str) -> RewardSource:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)}")
    return REWARDS[name]


def sharpness_per_view(p: ProblemRollouts, vote: Vote) -> list[float]:
    """The sharpness penalty of each view's group: c = responses matching the view's label."""
    return [sharpness_penalty(sum(1 for c in classes if label is not None and c == label), len(classes))
            for classes, label in zip(p.classes, vote.labels)]


def problem_rewards(p: ProblemRollouts, vote: Vote, source: RewardSource, opts: RewardOptions) -> PerView:
    """Rewards of one problem's responses: the source, then (pseudo-label only) the sharpness term,
    r <- r - c_s * penalty for every response of a (view, problem) group (a per-group constant)."""
    rewards = source.fn(p, vote, opts)
    if source.shaped and opts.sharpness_coef:
        for v, pen in enumerate(sharpness_per_view(p, vote)):
            if v == 0 or opts.reframe_reward:
                rewards[v] = [r - opts.sharpness_coef * pen for r in rewards[v]]
    return rewards


def problem_shaping(p: ProblemRollouts, source: RewardSource, opts: RewardOptions) -> PerView:
    """Advantage offsets of one problem's responses (added after GRPO normalisation): the format
    penalty -c_f (1 - f) on reframe responses with a format score (pseudo-label reward, reframe
    reward on), 0 elsewhere."""
    out = [[0.0] * len(view) for view in p.classes]
    if source.shaped and opts.format_penalty and opts.reframe_reward and p.format_scores is not None:
        for v in range(1, len(out)):
            out[v] = [0.0 if f is None else format_penalty(f, opts.format_penalty) for f in p.format_scores[v]]
    return out
