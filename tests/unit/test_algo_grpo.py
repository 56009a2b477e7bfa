"""GRPO pieces the consensus rewards feed: advantages per (view, problem) and the per-view loss
with the reframe view's policy-gradient term switched off."""

import statistics

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_mcore.algo.loss import grpo_advantages, grpo_view_loss, k3_kl, rows_by_view, view_advantages
from harmony_mcore.rewards import RewardOptions, view_has_policy_gradient

relaxed = settings(deadline=None)  # no per-example deadline: a shared CI machine's timing varies


@relaxed
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 1.0, 0.9, -0.1])), min_size=1, max_size=40),
       st.booleans())
def test_grpo_advantages_match_plain_python(rows, normalize_std):
    groups = torch.tensor([g for g, _ in rows])
    rewards = torch.tensor([r for _, r in rows])
    adv = grpo_advantages(rewards, groups, normalize_std=normalize_std)
    for i, (g, r) in enumerate(rows):
        members = [x for h, x in rows if h == g]
        mean, std = (statistics.fmean(members), statistics.stdev(members)) if len(members) > 1 else (0.0, 1.0)
        expect = (r - mean) / (std + 1e-6) if normalize_std else r - mean
        assert abs(adv[i].item() - expect) < 1e-4 * max(1.0, abs(expect))


def test_view_without_policy_gradient_keeps_only_its_kl_term():
    torch.manual_seed(1)
    logp = (torch.randn(4, 6) - 2).requires_grad_()
    old, ref = logp.detach() + 0.1 * torch.randn(4, 6), logp.detach() + 0.3 * torch.randn(4, 6)
    adv, mask = torch.randn(4), (torch.rand(4, 6) > 0.3).float()
    opts = RewardOptions(reframe_reward=False)
    loss, parts = grpo_view_loss(logp, old, ref, adv, mask, kl_coef=0.005,
                                 policy_gradient=view_has_policy_gradient(1, opts))
    kl = (k3_kl(logp, ref) * mask).sum() / mask.sum()
    assert parts["pg_loss"].item() == 0.0
    assert torch.allclose(loss, 0.005 * kl)
    (g,) = torch.autograd.grad(loss, logp)
    (g_kl,) = torch.autograd.grad(0.005 * kl, logp)
    assert torch.allclose(g, g_kl)  # advantages do not reach the gradient


def _reference_view_advantages(rows, normalize_std):
    """Plain Python: each rollout's advantage within its own (view, problem) group, listed per view."""
    out = {}
    for view, problem, r, shift in rows:
        members = [x for v, p, x, _ in rows if (v, p) == (view, problem)]
        mean, std = (statistics.fmean(members), statistics.stdev(members)) if len(members) > 1 else (0.0, 1.0)
        out.setdefault(view, []).append(((r - mean) / (std + 1e-6) if normalize_std else r - mean) + shift)
    return out


@relaxed
@given(st.integers(1, 3).flatmap(lambda k: st.tuples(st.just(k), st.lists(
    st.tuples(st.integers(0, k - 1), st.integers(0, 2), st.sampled_from([0.0, 1.0, 0.25]),
              st.sampled_from([0.0, -0.5])), min_size=1, max_size=30))), st.booleans())
def test_view_advantages_group_per_view_and_problem(case, normalize_std):
    k, rows = case
    views, problems, rewards, shaping = (list(c) for c in zip(*rows))
    adv = view_advantages(views, problems, rewards, shaping, num_views=k, normalize_std=normalize_std)
    want = _reference_view_advantages(rows, normalize_std)
    assert len(adv) == k
    for v in range(k):
        assert [round(a, 4) for a in adv[v].tolist()] == [round(a, 4) for a in want.get(v, [])]
    assert rows_by_view(views, k) == [[i for i, x in enumerate(views) if x == v] for v in range(k)]


def test_view_advantages_keep_views_apart():
    # one problem, solver 3/4 right, reframer 1/4 right, rollouts interleaved as the engine may return them:
    # swapping the views' advantages, or normalising both views in one group, changes every number
    views = [0, 1, 0, 1, 0, 1, 0, 1]
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    solver, reframer = view_advantages(views, [7] * 8, rewards, [0.0] * 8, num_views=2)
    s = statistics.stdev([1, 1, 1, 0])
    assert torch.allclose(solver, torch.tensor([0.25, 0.25, 0.25, -0.75]) / (s + 1e-6))
    assert torch.allclose(reframer, torch.tensor([0.75, -0.25, -0.25, -0.25]) / (s + 1e-6))
