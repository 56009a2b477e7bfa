import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_mcore.algo.loss import grpo_advantages, shaped_advantages
from harmony_mcore.config import AlgorithmConfig, ConfigError
from harmony_mcore.consensus.strategies import get_strategy
from harmony_mcore.rewards import (
    REWARDS, ProblemRollouts, RewardOptions, format_score, get_reward, problem_rewards, problem_shaping,
    sharpness_penalty, soft_rank_rewards, view_has_policy_gradient,
)

relaxed = settings(deadline=None)  # no per-example deadline: a shared CI machine's timing varies

PL = get_reward("pseudo-label")


def test_pseudo_label_rewards_per_view_and_no_label():
    p = ProblemRollouts(classes=[[0, 1, None, 0], [0, 0, 2]])
    vote = get_strategy("harmonic-mean")(p.classes)
    assert problem_rewards(p, vote, PL, RewardOptions()) == [[1, 0, 0, 1], [1, 1, 0]]
    none = ProblemRollouts(classes=[[0, 0], [1, 1]])
    assert problem_rewards(none, get_strategy("harmonic-mean")(none.classes), PL, RewardOptions()) == [[0, 0], [0, 0]]
    # per-view labels (cross): view 0 is judged by view 1's majority and vice versa
    q = ProblemRollouts(classes=[[0, 0, 1], [1, 1, 0]])
    assert problem_rewards(q, get_strategy("cross")(q.classes), PL, RewardOptions()) == [[0, 0, 1], [0, 0, 1]]


def test_reframe_reward_off_zeroes_the_view_and_turns_off_its_policy_gradient():
    opts = RewardOptions(reframe_reward=False, format_penalty=0.1, sharpness_coef=0.1)
    p = ProblemRollouts(classes=[[0, 1], [0, 0]], format_scores=[[None, None], [0.0, 1.0]])
    r = problem_rewards(p, get_strategy("majority")(p.classes), PL, opts)
    assert r[1] == [0.0, 0.0]
    assert view_has_policy_gradient(0, opts) and not view_has_policy_gradient(1, opts)
    assert view_has_policy_gradient(1, RewardOptions())


def test_soft_rank_reward_reference_example():
    # O = {5,5,5,7}, A = {7,7,5,9}: harmonic scores 5: 3/8, 7: 1/3, 9: 0 (only in A) -> ranks 0, 1, 2
    views = [[0, 0, 0, 1], [1, 1, 0, 2, None]]
    r = soft_rank_rewards(views, views[1], top_k=8)
    assert r == pytest.approx([6 / 7, 6 / 7, 1.0, 5 / 7, 0.0])  # 5/7 = 0.714: the reference's quirk
    assert soft_rank_rewards(views, views[1], top_k=2) == pytest.approx([0.0, 0.0, 1.0, 0.0, 0.0])
    opts = RewardOptions(soft_reframe_reward=True)
    p = ProblemRollouts(classes=views)
    out = problem_rewards(p, get_strategy("harmonic-mean")(views), PL, opts)
    assert out[0] == [1, 1, 1, 0] and out[1] == pytest.approx(r)


def test_soft_rank_reward_is_zero_when_the_solver_view_has_no_answer():
    """The reference gives every reframe response 0 then; ranking the reframe answers among
    themselves would give [1, 1, 6/7, 5/7]."""
    views = [[None, None, None], [0, 0, 1, 2]]
    assert soft_rank_rewards(views, views[1]) == [0.0] * 4
    p = ProblemRollouts(classes=views)
    out = problem_rewards(p, get_strategy("harmonic-mean")(views), PL, RewardOptions(soft_reframe_reward=True))
    assert out == [[0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("text,f", [
    ("STRATEGY: Reverse\nREWRITTEN PROBLEM: Start from 12 and undo.\nSOLUTION: 12/3 = 4, so \\boxed{4}", 1.0),
    ("**STRATEGY:** Concretize\n**REWRITTEN PROBLEM:** Ann has 3 apples...\n**SOLUTION:** \\boxed{3}", 1.0),
    ("strategy: pov shift\nrewritten problem: As the triangle, I...\nsolution: \\boxed{2}", 1.0),
    ("STRATEGY: Reverse\nREWRITTEN PROBLEM: Find x in [0,1] with x^2 = 1/4.\nSOLUTION: \\boxed{1/2}", 1.0),
    ("STRATEGY: Reverse\nREWRITTEN PROBLEM: [rewritten problem here]\nSOLUTION: \\boxed{4}", 2 / 3),
    ("STRATEGY: ...\nREWRITTEN PROBLEM: <placeholder>\nSOLUTION: \\boxed{4}", 1 / 3),
    ("STRATEGY: Generalize\nSOLUTION: n(n+1)/2 gives \\boxed{55}", 2 / 3),
    ("STRATEGY:\nREWRITTEN PROBLEM:\nSOLUTION:", 0.0),
    ("The answer is \\boxed{4}", 0.0),
])
def test_format_score(text, f):
    assert format_score(text) == pytest.approx(f)


def test_format_penalty_is_an_advantage_offset_on_reframe_views_only():
    p = ProblemRollouts(classes=[[0, 0], [0, 1]], format_scores=[[0.0, 0.0], [1 / 3, 1.0]])
    vote = get_strategy("harmonic-mean")(p.classes)
    assert problem_rewards(p, vote, PL, RewardOptions(format_penalty=0.3)) == [[1, 1], [1, 0]]
    assert problem_shaping(p, PL, RewardOptions(format_penalty=0.3)) == [[0, 0], [pytest.approx(-0.2), 0.0]]
    assert problem_shaping(p, PL, RewardOptions(format_penalty=0.3, reframe_reward=False)) == [[0, 0], [0, 0]]
    # baselines stay unshaped
    assert problem_shaping(p, get_reward("gt"), RewardOptions(format_penalty=0.3)) == [[0, 0], [0, 0]]


@pytest.mark.parametrize("case", ["all right", "all wrong", "no label"])
def test_format_penalty_cannot_masquerade_as_correctness(case):
    """A reframe group of 16 whose correctness is constant: 12 responses with all three markers
    (f = 1) and 4 without STRATEGY (f = 2/3), penalty 0.1. The label comes from the solver view
    (ttrl), so the reframe view can be all right, all wrong, or have no label at all."""
    solver = [None] * 16 if case == "no label" else [0] * 16
    reframe = [1] * 16 if case == "all wrong" else [0] * 16
    f = [1.0] * 12 + [2 / 3] * 4
    p = ProblemRollouts(classes=[solver, reframe], format_scores=[[None] * 16, f])
    opts = RewardOptions(format_penalty=0.1)
    r = problem_rewards(p, get_strategy("ttrl")(p.classes), PL, opts)[1]
    assert len(set(r)) == 1  # constant correctness
    group = torch.zeros(16, dtype=torch.long)
    adv = shaped_advantages(torch.tensor(r), group, torch.tensor(problem_shaping(p, PL, opts)[1]))
    assert adv[:12].abs().max() < 1e-5 and adv[12:] == pytest.approx([-0.1 / 3] * 4, abs=1e-5)
    assert adv.abs().max() <= 0.1  # bounded by the coefficient
    # what the same penalty did when added to the rewards: a full-size advantage (the numbers)
    old = grpo_advantages(torch.tensor(r) - 0.1 * (1 - torch.tensor(f)), group)
    assert old[:12] == pytest.approx([0.559] * 12, abs=1e-3) and old[12:] == pytest.approx([-1.677] * 4, abs=1e-3)


def test_a_correctness_split_keeps_full_size_advantages_under_the_format_penalty():
    f = [1.0] * 12 + [2 / 3] * 4
    for right in (12, 8, 4):
        reframe = [0] * right + [1] * (16 - right)
        p = ProblemRollouts(classes=[[0] * 16, reframe], format_scores=[[None] * 16, f])
        opts = RewardOptions(format_penalty=0.1)
        r = torch.tensor(problem_rewards(p, get_strategy("ttrl")(p.classes), PL, opts)[1])
        group = torch.zeros(16, dtype=torch.long)
        plain = grpo_advantages(r, group)
        adv = shaped_advantages(r, group, torch.tensor(problem_shaping(p, PL, opts)[1]))
        assert plain.abs().min() > 0.55  # a real split: every advantage is full-size
        assert (adv - plain).abs().max() <= 0.1 + 1e-6 and torch.equal(adv > 0, plain > 0)


def test_sharpness_penalty_values():
    assert sharpness_penalty(8, 16) == 0.0 and sharpness_penalty(0, 16) == 1.0 and sharpness_penalty(16, 16) == 1.0
    assert sharpness_penalty(4, 16) == pytest.approx(0.25) and sharpness_penalty(4, 8) == 0.0  # reference: 4 of 8
    assert sharpness_penalty(0, 0) == 0.0


@relaxed
@given(st.lists(st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=2, max_size=16), min_size=2, max_size=2),
       st.booleans())
def test_sharpness_shifts_rewards_but_cancels_in_grpo(views, normalize_std):
    """The sharpness term is a constant per (view, problem) group: GRPO's mean subtraction removes
    it, so advantages (what trains) do not change; logged rewards do, by coef * penalty."""
    p = ProblemRollouts(classes=views)
    vote = get_strategy("harmonic-mean")(views)
    plain = problem_rewards(p, vote, PL, RewardOptions())
    sharp = problem_rewards(p, vote, PL, RewardOptions(sharpness_coef=0.5))
    for v, (a, b) in enumerate(zip(plain, sharp)):
        c = sum(1 for x in views[v] if vote.labels[v] is not None and x == vote.labels[v])
        pen = sharpness_penalty(c, len(views[v]))
        assert sum(b) / len(b) == pytest.approx(sum(a) / len(a) - 0.5 * pen)
        groups = torch.zeros(len(a), dtype=torch.long)
        adv_a = grpo_advantages(torch.tensor(a), groups, normalize_std=normalize_std)
        adv_b = grpo_advantages(torch.tensor(b), groups, normalize_std=normalize_std)
        assert torch.allclose(adv_a, adv_b, atol=1e-5)


def test_sharpness_changes_a_singleton_group():
    # What it does change: a group of one response (mean 0, std 1 by convention) keeps the shift.
    p = ProblemRollouts(classes=[[0], [0]])
    vote = get_strategy("harmonic-mean")(p.classes)
    r = problem_rewards(p, vote, PL, RewardOptions(sharpness_coef=0.1))
    adv = grpo_advantages(torch.tensor(r[0]), torch.zeros(1, dtype=torch.long))
    assert adv.item() == pytest.approx(1 - 0.1 * sharpness_penalty(1, 1), rel=1e-5) and adv.item() < 0.95


def test_gt_and_value_sources():
    p = ProblemRollouts(classes=[[0, 1]], gt_correct=[[False, True]], values=[[0.5, -2.0]])
    vote = get_strategy("ttrl")(p.classes)
    assert problem_rewards(p, vote, get_reward("gt"), RewardOptions()) == [[0, 1]]
    assert problem_rewards(p, vote, get_reward("intuitor"), RewardOptions()) == [[0.5, -2.0]]
    with pytest.raises(ValueError, match="ground truth"):
        problem_rewards(ProblemRollouts(classes=[[0]]), vote, get_reward("gt"), RewardOptions())
    with pytest.raises(ValueError, match="token_stat"):
        problem_rewards(ProblemRollouts(classes=[[0]], values=[[None]]), vote, get_reward("rent"), RewardOptions())


def test_token_stat_rewards_name_statistics_the_policy_computes():
    """The policy computes these statistics vocab-parallel (checked against transformers in tests/policy);
    the registry says which one a reward uses and its sign: RENT rewards low entropy, Intuitor high
    self-certainty."""
    from harmony_mcore.parallel.vocab_parallel import STATS

    stats = {name: source.token_stat for name, source in REWARDS.items() if source.token_stat}
    assert all(s.name in STATS for s in stats.values())
    assert {n: (s.name, s.sign) for n, s in stats.items()} == {"rent": ("entropy", -1.0),
                                                               "intuitor": ("self_certainty", 1.0)}


def test_registry_matches_config_and_errors():
    for name in REWARDS:
        AlgorithmConfig(reward=name).validate()
    with pytest.raises(ConfigError):
        AlgorithmConfig(reward="nope").validate()
    with pytest.raises(ValueError, match="pseudo-label, gt, intuitor, rent"):
        get_reward("nope")
    opts = RewardOptions.from_config(AlgorithmConfig(soft_top_k=4, reframe_reward=False))
    assert opts.soft_top_k == 4 and not opts.reframe_reward and opts.format_penalty == 0.1
