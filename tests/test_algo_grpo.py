"""GRPO pieces the consensus rewards feed: advantages per (view, problem) and the per-view loss
with the reframe view's policy-gradient term switched off."""

import statistics

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_mcore.algo.loss import grpo_advantages, grpo_view_loss, k3_kl
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
