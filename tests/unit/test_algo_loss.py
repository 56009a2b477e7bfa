import math

import torch

from harmony_mcore.algo.loss import grpo_advantages, grpo_view_loss, k3_kl, ppo_clip_token_loss, token_mean
from harmony_mcore.algo.schedules import lr_at, strategy_at


def test_grpo_advantages_per_group_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    a = grpo_advantages(r, g)
    # group 0: mean .5, unbiased std sqrt(1/3)
    s = math.sqrt(1 / 3)
    assert torch.allclose(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6))
    assert torch.allclose(a[4:6], torch.zeros(2))  # constant group: no signal
    assert a[6].item() == 0.0  # singleton: mean 0, std 1 -> r
    assert torch.allclose(grpo_advantages(r[:4], g[:4], normalize_std=False), torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_ppo_clip_and_dual_clip():
    logp = torch.log(torch.tensor([[2.0, 0.5, 10.0]]))
    old = torch.zeros(1, 3)
    pos = ppo_clip_token_loss(logp, old, torch.tensor([1.0]))
    assert torch.allclose(pos, torch.tensor([[-1.2, -0.5, -1.2]]))
    neg = ppo_clip_token_loss(logp, old, torch.tensor([-1.0]))
    # ratio 2 -> max(2, 1.2) = 2; ratio .5 -> max(.5, .8) = .8; ratio 10 -> dual clip at 3
    assert torch.allclose(neg, torch.tensor([[2.0, 0.8, 3.0]]))


def test_grpo_advantages_see_the_std_epsilon():
    # a group whose std (5.8e-5) is close to eps: dropping or moving eps changes A by percents
    r = torch.tensor([0.0, 1e-4, 0.0, 1e-4], dtype=torch.float64)
    g = torch.zeros(4, dtype=torch.long)
    std = r.std(unbiased=True)
    for eps in (1e-6, 1e-5):
        want = (r - r.mean()) / (std + eps)
        assert torch.allclose(grpo_advantages(r, g, eps=eps).double(), want, rtol=1e-6, atol=0)
    assert not torch.allclose(grpo_advantages(r, g).double(), (r - r.mean()) / std, rtol=1e-3, atol=0)


def test_k3_kl_is_clamped():
    logp = torch.zeros(1, 4)
    ref = torch.tensor([[0.0, 1.0, 5.0, 30.0]])  # k3 = 0, e - 2, e^5 - 6 (> 10), beyond the log-ratio clamp
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([[0.0, math.e - 2, 10.0, 10.0]]))
    assert torch.allclose(k3_kl(logp, ref, clamp=3.0), torch.tensor([[0.0, math.e - 2, 3.0, 3.0]]))
    mask = torch.ones(1, 4)
    loss, parts = grpo_view_loss(logp, logp, ref, torch.zeros(1), mask, kl_coef=1.0, kl_clamp=3.0)
    assert torch.allclose(parts["kl"], torch.tensor((math.e - 2 + 6.0) / 4))


def test_k3_kl_nonnegative_and_zero_at_equal():
    logp = torch.randn(4, 5)
    assert torch.allclose(k3_kl(logp, logp), torch.zeros(4, 5))
    assert (k3_kl(logp, torch.randn(4, 5)) >= 0).all()


def test_token_mean_micro_batches_sum_to_global_mean():
    v, m = torch.randn(6, 7), (torch.rand(6, 7) > 0.3).float()
    whole = token_mean(v, m)
    parts = token_mean(v[:2], m[:2], m.sum()) + token_mean(v[2:], m[2:], m.sum())
    assert torch.allclose(whole, parts)


def test_view_loss_matches_plain_torch():
    torch.manual_seed(0)
    logp, old, ref = torch.randn(3, 4) - 2, torch.randn(3, 4) - 2, torch.randn(3, 4) - 2
    adv, mask = torch.randn(3), (torch.rand(3, 4) > 0.2).float()
    loss, _ = grpo_view_loss(logp, old, ref, adv, mask, kl_coef=0.005)
    ratio = (logp - old).exp()
    A = adv[:, None].expand(3, 4)
    pg = torch.max(-A * ratio, -A * ratio.clamp(0.8, 1.2))
    pg = torch.where(A < 0, torch.min(pg, -3 * A), pg)
    kl = (ref - logp).exp() - (ref - logp) - 1
    expect = (pg * mask).sum() / mask.sum() + 0.005 * (kl * mask).sum() / mask.sum()
    assert torch.allclose(loss, expect)


def test_lr_schedule_and_strategy_switch():
    lrs = [lr_at(s, base_lr=1.0, total_steps=100) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0 and abs(lrs[10] - 1.0) < 1e-12
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3
    # the reference's warmup (verl's cosine schedule with warmup, lr_warmup_init=0): the first update has lr 0
    ref = [lr_at(s, base_lr=3e-6, total_steps=300, warmup_init=0.0) for s in range(300)]
    verl = [3e-6 * (s / 30 if s < 30 else 0.5 * (1 + math.cos(math.pi * (s - 30) / 270))) for s in range(300)]
    assert ref[0] == 0.0 and all(abs(a - b) <= 1e-18 for a, b in zip(ref, verl))
    assert strategy_at(19, strategy="majority", warmup_strategy="harmonic-mean", warmup_steps=20) == "harmonic-mean"
    assert strategy_at(20, strategy="majority", warmup_strategy="harmonic-mean", warmup_steps=20) == "majority"
