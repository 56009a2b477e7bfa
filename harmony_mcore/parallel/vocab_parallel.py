"""Per-token log-probs (and entropy or self-certainty) from vocab-parallel logits, without gathering the vocabulary.

Each TP rank holds logits for a contiguous slice of the (padded) vocabulary. Log-softmax needs the
global max and the global sum of exponentials: two small all-reduces over the TP group. Vocabulary
padding (Megatron pads to a multiple of 128*TP) is masked out so results equal the HF model's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

STATS = ("entropy", "self_certainty")  # the per-token statistics `stat` may name


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                            temperature: float = 1.0, stat: str | None = None):
    """log p(target) for logits [..., V_local] and targets [...], and a per-token statistic (no grad):
    `stat="entropy"` H(p) = -sum p log p, `stat="self_certainty"` logsumexp(z) - mean(z) (Intuitor), or None.

    Differentiable w.r.t. `logits`: TP sums go through Megatron's reduce_from_tensor_model_parallel_region
    (all-reduce forward, identity backward), the right rule when every TP rank computes the same loss.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region as tp_sum

    group = ps.get_tensor_model_parallel_group()
    v_local = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * v_local
    ids = torch.arange(start, start + v_local, device=logits.device)
    z = logits.float() / temperature
    padding = ids >= vocab_size
    z = z.masked_fill(padding, float("-inf"))

    zmax = z.detach().amax(dim=-1)
    if dist.get_world_size(group) > 1:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    shifted = z - zmax.unsqueeze(-1)
    lse = torch.log(tp_sum(shifted.exp().sum(dim=-1)))  # log-sum-exp minus zmax

    local = targets - start
    owned = (local >= 0) & (local < v_local)
    picked = shifted.gather(-1, local.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    target_shifted = tp_sum(torch.where(owned, picked, torch.zeros_like(picked)))
    logp = target_shifted - lse

    if stat is None:
        return logp, None
    with torch.no_grad():
        if stat == "entropy":
            p = torch.exp(shifted - lse.unsqueeze(-1))
            local_sum = torch.where(padding, torch.zeros_like(p), p * shifted).sum(dim=-1)
        elif stat == "self_certainty":
            local_sum = torch.where(padding, torch.zeros_like(shifted), shifted).sum(dim=-1) / vocab_size
        else:
            raise ValueError(f"stat={stat!r}: use one of {STATS} or None")
        if dist.get_world_size(group) > 1:
            dist.all_reduce(local_sum, group=group)
        # Both are lse - E[z] (over p for the entropy, uniform over the vocabulary for self-certainty),
        # and both are invariant to the zmax shift.
        return logp, lse - local_sum
