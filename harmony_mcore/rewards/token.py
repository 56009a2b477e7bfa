"""Per-token reward signals computed from the policy's logits (Intuitor, RENT).

The functions take full-vocabulary logits [..., V] (trim vocabulary padding first; under tensor
parallelism gather the vocab shards or compute the same reductions vocab-parallel) and return
per-token values [...]; `response_mean` turns them into one value per response. Only tensor
methods are used, so importing this module (e.g. by `harmony vote`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def token_self_certainty(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp(z) - mean(z): KL(uniform || p) up to the constant log V (Intuitor)."""
    z = logits.float()
    return z.logsumexp(dim=-1) - z.mean(dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p log p of the next-token distribution."""
    logp = logits.float().log_softmax(dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """RENT's reward per token: the negative entropy (confident predictions score higher)."""
    return -token_entropy(logits)


def response_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-token values over each response's tokens: [B, T] -> [B] (0 for an empty one)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
