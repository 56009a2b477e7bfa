"""GRPO advantages and the PPO-clip + k3-KL policy loss, as pure tensor functions.

Shapes: rewards are per response [B]; per-token tensors are [B, T] with a 0/1 response mask.
"""

from __future__ import annotations

import torch


def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """A = (r - mean_g) / (std_g + eps) within each group g (unbiased std).

    A group of one response has mean 0 and std 1 (verl's convention), so its advantage is r.
    Callers form groups per (view, problem): views are never mixed in one group.
    """
    rewards = rewards.to(torch.float64)
    out = torch.empty_like(rewards)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero(as_tuple=True)[0]
        r = rewards[idx]
        if r.numel() == 1:
            mean, std = torch.zeros_like(r[0]), torch.ones_like(r[0])
        else:
            mean, std = r.mean(), r.std(unbiased=True)
        out[idx] = (r - mean) / (std + eps) if normalize_std else r - mean
    return out.to(torch.float32)


def shaped_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, shaping: torch.Tensor, *,
                      normalize_std: bool = True) -> torch.Tensor:
    """GRPO advantages of the rewards plus per-response shaping offsets, added AFTER normalisation.

    A shaping term (the format penalty) then moves an advantage by at most its own size. Added to
    the rewards instead, the std normalisation would turn it into a full-size advantage in a group
    whose correctness is constant: 12 formatted and 4 unformatted responses, all right, would get
    +0.56 / -1.68, as much as a 12-vs-4 split in correctness (tests/unit/test_rewards.py).
    """
    return grpo_advantages(rewards, group_ids, normalize_std=normalize_std) + shaping.to(torch.float32)


def rows_by_view(views: list[int], num_views: int) -> list[list[int]]:
    """Indices of the rollouts of each view, in rollout order: [view][row]."""
    return [[i for i, v in enumerate(views) if v == k] for k in range(num_views)]


def view_advantages(views: list[int], problems: list[int], rewards: list[float], shaping: list[float], *,
                    num_views: int, normalize_std: bool = True) -> list[torch.Tensor]:
    """Shaped GRPO advantages of every rollout, split per view in `rows_by_view` order.

    One group per (view, problem): the solver's and the reframer's samples of a problem are
    normalised separately, since their reward distributions differ by design.
    """
    keys = list(zip(views, problems))
    group_of = {key: g for g, key in enumerate(dict.fromkeys(keys))}
    adv = shaped_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor([group_of[k] for k in keys]),
                            torch.tensor(shaping, dtype=torch.float64), normalize_std=normalize_std)
    return [adv[idx] for idx in rows_by_view(views, num_views)]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 ("low-var") estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1."""
    log_ratio = torch.clamp(ref_logp - logp, -20.0, 20.0)
    kl = torch.exp(log_ratio) - log_ratio - 1.0
    return torch.clamp(kl, -clamp, clamp)


def ppo_clip_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> torch.Tensor:
    """Per-token PPO-clip loss (to minimise), with dual clip on negative advantages.

    `advantages` is [B] or [B, T]; a [B] tensor is broadcast over tokens.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    loss = torch.maximum(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    )
    if dual_clip is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * dual_clip), loss)
    return loss


def token_mean(values: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of masked values divided by `denom` (default: the mask's token count).

    Pass the token count of the whole view's batch as `denom` to get a global token-mean from
    micro-batches: summing the micro-batch results then equals the token-mean over the batch.
    """
    total = (values * mask).sum()
    if denom is None:
        denom = mask.sum()
    return total / torch.clamp(torch.as_tensor(denom, dtype=values.dtype), min=1.0)


def grpo_view_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 0.005,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    kl_clamp: float = 10.0,
    denom: float | torch.Tensor | None = None,
    policy_gradient: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One view's loss: token-mean PPO-clip (if `policy_gradient`) + kl_coef * token-mean k3 KL."""
    mask = mask.to(logp.dtype)
    zero = logp.new_zeros(())
    pg = token_mean(ppo_clip_token_loss(logp, old_logp, advantages, clip_low=clip_low,
                                        clip_high=clip_high, dual_clip=dual_clip), mask, denom) \
        if policy_gradient else zero
    kl = token_mean(k3_kl(logp, ref_logp, kl_clamp), mask, denom) if ref_logp is not None and kl_coef else zero
    loss = pg + kl_coef * kl
    return loss, {"pg_loss": pg.detach(), "kl": kl.detach()}
