"""torchrun script: policy log-probs and one GRPO step vs plain-torch HF references, for each family.

Usage: torchrun --nproc_per_node N check_policy.py LAYOUT [LAYOUT ...], LAYOUT = TPxPP[vVPP][:DTYPE], e.g. 2x2
1x2v2:bf16 (DP = N / (TP*PP); Megatron's distributed optimizer over DP). Layouts run one after another in the same
processes (Megatron's groups are rebuilt), which saves a launch's imports per layout. Each rank checks its own
results; any mismatch raises (non-zero exit). Rank 0 prints a summary per layout.

fp32 layouts check every family to 1e-5. bf16/fp16 layouts (Qwen3 only) check two GRPO steps against the same
plain-torch fp32 reference started from the same rounded weights, within low-precision tolerances (LOWP_TOL).
"""

import copy
import sys

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from support import TINY, hf_model, hf_row_logprobs, hf_weight_shard, load_hf_weights, make_batch

from harmony_mcore.algo.schedules import lr_at
from harmony_mcore.bridge.mapping import get_mapping
from harmony_mcore.config import AlgorithmConfig, ParallelConfig
from harmony_mcore.models.builder import global_name
from harmony_mcore.parallel import destroy_distributed, init_distributed, init_model_parallel
from harmony_mcore.policy import Policy, ViewBatch

TEMP = 0.7
TOTAL_STEPS = 3  # the cosine schedule changes the lr between the two checked steps
ALGO = AlgorithmConfig(lr=1e-4, weight_decay=0.01, grad_clip=0.05, warmup_ratio=0.0, kl_coef=0.1)
# Low precision (Qwen3): each step's loss and grad norm (before clipping), as relative errors.
# The DP-only layout (the single-process computation split by rows, fp32 gradient reduction) is the reference of
# the other layouts in the same dtype (LOWP_TOL); it is itself checked against the plain-torch fp32 steps
# (VS_FP32_TOL; bf16 only at the first step: a 1e-4 update is below bf16's resolution of the weights, so its
# second step differs from fp32 by ~25%). Measured: bf16 vs fp32 step 0 loss 6e-3, grad norm 4.6e-2; fp16 both
# steps <= 1.7e-2. Without the fp16 loss scale the grad norm would be 2^16 times too small.
LOWP_TOL = {"loss": 2e-2, "grad_norm": 3e-2}  # measured TP2 bf16: loss 5.4e-3, grad norm 3.9e-3
VS_FP32_TOL = {"bf16": (1, {"loss": 2e-2, "grad_norm": 0.1}), "fp16": (2, {"loss": 5e-2, "grad_norm": 5e-2})}
LOWP_REF: dict[str, list[dict]] = {}  # dtype -> metrics of the DP-only layout


def check_logprobs(pol, hf, ids, attn):
    logp, ent = pol.logprobs(ids, attn, temperature=TEMP, stat="entropy")
    _, certainty = pol.logprobs(ids, attn, temperature=TEMP, stat="self_certainty")
    ref_logp, _ = pol.logprobs(ids, attn, temperature=TEMP, reference=True)
    err = stat_err = 0.0
    for r in range(ids.shape[0]):
        real = attn[r].bool()
        want, want_ent, want_certainty = hf_row_logprobs(hf, ids[r, real], TEMP)
        err = max(err, (logp[r, real][1:] - want).abs().max().item())
        stat_err = max(stat_err, (ent[r, real][1:] - want_ent).abs().max().item(),
                       (certainty[r, real][1:] - want_certainty).abs().max().item())
        assert (logp[r, ~real] == 0).all() and logp[r, real][0] == 0
    assert err < 1e-5 and stat_err < 1e-5, (err, stat_err)
    assert torch.equal(ref_logp, logp), "reference must equal the policy right after sync_reference()"
    return logp, err, stat_err


def plain_torch_steps(hf, views, pg_flags, lrs, algo=ALGO):
    """The same GRPO steps written out with HF per-row forwards, explicit formulas and torch's utilities."""
    model = copy.deepcopy(hf)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": algo.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=algo.lr, betas=algo.betas, eps=1e-8)
    losses, norms = [], []
    for lr in lrs:
        opt.zero_grad()
        total = 0.0
        for view, pg_on in zip(views, pg_flags):
            mask = view.response_mask * view.attention_mask
            denom = sum(mask[r, view.attention_mask[r].bool()][1:].sum() for r in range(mask.shape[0]))
            for r in range(mask.shape[0]):
                real = view.attention_mask[r].bool()
                logp, _, _ = hf_row_logprobs(model, view.input_ids[r, real], TEMP)
                m = mask[r, real][1:].float()
                old, ref, A = view.old_logp[r, real][1:], view.ref_logp[r, real][1:], view.advantages[r]
                ratio = torch.exp(logp - old)
                pg = torch.maximum(-A * ratio, -A * ratio.clamp(1 - ALGO.clip_low, 1 + ALGO.clip_high))
                if A < 0:
                    pg = torch.minimum(pg, -A * ALGO.dual_clip)
                kl = torch.exp(ref - logp) - (ref - logp) - 1
                total = total + ((pg if pg_on else 0.0) + ALGO.kl_coef * kl).mul(m).sum() / denom
        total.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, algo.grad_clip).item())
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        losses.append(total.item())
    return model, losses, norms


def weight_pairs(pol, name, want_model):
    """(this rank's shard, the same shard of want_model) for every parameter of the policy."""
    want_sd, mapping = want_model.state_dict(), get_mapping(TINY[name])
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    return [(p.detach().float(), hf_weight_shard(mapping, global_name(module, n), want_sd.__getitem__,
                                                 module.vocab_size, tp, rank))
            for module in pol.modules for n, p in module.named_parameters()]


def weight_error(pol, name, want_model):
    return max((p - want).abs().max().item() for p, want in weight_pairs(pol, name, want_model))


def make_views(ids, attn, resp, logp):
    g = torch.Generator().manual_seed(7)
    B, T = ids.shape
    # Three views: the solver, a reframe view with its own (shorter) mask, and a KL-only view.
    masks = [resp, resp * (torch.rand(B, T, generator=g) > 0.3), resp]
    pg_flags = [True, True, False]
    views = [ViewBatch(ids, attn, m.long(), old_logp=logp + 0.3 * torch.randn(B, T, generator=g),
                       advantages=torch.randn(B, generator=g), ref_logp=logp + 0.3 * torch.randn(B, T, generator=g),
                       policy_gradient=pg) for m, pg in zip(masks, pg_flags)]
    return views, pg_flags


def check_train(pol, hf, name, ids, attn, resp, logp):
    """Two GRPO steps (lr from the schedule, Adam state carried over) vs plain torch; then a skipped step."""
    views, pg_flags = make_views(ids, attn, resp, logp)
    metrics = [pol.train_step(views, step=s, temperature=TEMP) for s in range(2)]
    lrs = [lr_at(s, base_lr=ALGO.lr, total_steps=TOTAL_STEPS, warmup_ratio=ALGO.warmup_ratio) for s in range(2)]
    assert lrs[0] != lrs[1] and [m["lr"] for m in metrics] == lrs
    want_model, want_losses, want_norms = plain_torch_steps(hf, views, pg_flags, lrs)
    assert min(want_norms) > ALGO.grad_clip, "the check must exercise gradient clipping"
    for m, want_loss, want_norm in zip(metrics, want_losses, want_norms):
        assert abs(m["loss"] - want_loss) < 1e-5 * max(1.0, abs(want_loss)), (m["loss"], want_loss)
        assert abs(m["grad_norm"] - want_norm) < 1e-5 * max(1.0, want_norm), (m["grad_norm"], want_norm)
        assert m["skipped"] == 0.0
    werr = weight_error(pol, name, want_model)
    moved = max((p0 - p1).abs().max().item() for p0, p1 in zip(hf.parameters(), want_model.parameters()))
    assert werr < 1e-5 and moved > 5e-5, (werr, moved)
    check_nonfinite_skipped(pol, views)
    return metrics[-1]["loss"], werr, moved


def check_nonfinite_skipped(pol, views):
    """A non-finite gradient skips the update and leaves the weights alone (fp32: our check; bf16/fp16:
    Megatron's optimizer's own, through its grad scaler)."""
    before = [p.detach().clone() for m in pol.modules for p in m.parameters()]
    bad = copy.copy(views[0])
    bad.advantages = views[0].advantages.clone()
    bad.advantages[0] = float("nan")
    skipped = pol.train_step([bad], step=2, temperature=TEMP)
    after = [p.detach() for m in pol.modules for p in m.parameters()]
    assert skipped["skipped"] == 1.0 and all(torch.equal(a, b) for a, b in zip(before, after)), skipped


def rel_errors(metrics, want_losses, want_norms):
    return {"loss": [abs(m["loss"] - w) / abs(w) for m, w in zip(metrics, want_losses)],
            "grad_norm": [abs(m["grad_norm"] - w) / w for m, w in zip(metrics, want_norms)]}


def check_low_precision(par: ParallelConfig, dtype: str) -> list[str]:
    """Qwen3 in bf16/fp16 (fp32 main params): two GRPO steps vs the DP-only layout in the same dtype, which
    is checked against the plain-torch fp32 steps from the same (rounded) weights."""
    name = "qwen3"
    hf = hf_model(name, 0)
    pol = Policy(TINY[name], par, ALGO, dtype=dtype, total_steps=TOTAL_STEPS)
    load_hf_weights(pol, hf.state_dict())
    with torch.no_grad():  # the reference starts from the weights the policy holds
        for p in hf.parameters():
            p.copy_(p.to(pol.modules[0].config.params_dtype).float())
    ids, attn, resp = make_batch(0)
    logp, _ = pol.logprobs(ids, attn, temperature=TEMP)
    views, pg_flags = make_views(ids, attn, resp, logp)
    metrics = [pol.train_step(views, step=s, temperature=TEMP) for s in range(2)]
    assert all(m["skipped"] == 0.0 for m in metrics), metrics
    if par.tp == par.pp == 1:
        lrs = [lr_at(s, base_lr=ALGO.lr, total_steps=TOTAL_STEPS, warmup_ratio=ALGO.warmup_ratio) for s in range(2)]
        _, want_losses, want_norms = plain_torch_steps(hf, views, pg_flags, lrs)
        steps, tol = VS_FP32_TOL[dtype]
        errs = rel_errors(metrics[:steps], want_losses, want_norms)
        what = "vs plain-torch fp32"
        LOWP_REF[dtype] = metrics
    else:
        ref, tol = LOWP_REF[dtype], LOWP_TOL
        errs = rel_errors(metrics, [m["loss"] for m in ref], [m["grad_norm"] for m in ref])
        what = f"vs the DP-only {dtype} layout"
    assert all(max(errs[k]) < tol[k] for k in tol), (dtype, what, errs, tol)
    check_nonfinite_skipped(pol, views)
    return [f"  {name} {dtype} {what}: " + " ".join(f"{k} rel err {max(v):.1e} (tol {tol[k]:g})"
                                                    for k, v in errs.items())]


def parse(layout: str) -> tuple[ParallelConfig, str]:
    layout, _, dtype = layout.partition(":")
    tp, rest = layout.split("x")
    pp, _, vpp = rest.partition("v")
    return ParallelConfig(tp=int(tp), pp=int(pp), vpp=int(vpp) if vpp else None, micro_batch_size=2,
                          distributed_optimizer=True), dtype or "fp32"


def check_layout(par: ParallelConfig, dtype: str) -> list[str]:
    if dtype != "fp32":
        return check_low_precision(par, dtype)
    lines = []
    for seed, name in enumerate(TINY):
        hf = hf_model(name, seed)
        pol = Policy(TINY[name], par, ALGO, dtype="fp32", total_steps=TOTAL_STEPS)
        load_hf_weights(pol, hf.state_dict())
        ids, attn, resp = make_batch(seed)
        logp, err, stat_err = check_logprobs(pol, hf, ids, attn)
        loss, werr, moved = check_train(pol, hf, name, ids, attn, resp, logp)
        lines.append(f"  {name}: logp err {err:.2e} entropy/self-certainty err {stat_err:.2e} | 2nd step loss {loss:.6f} "
                     f"weight err after 2 steps {werr:.2e} (update size {moved:.2e})")
    return lines


def main():
    layouts = [parse(a) for a in sys.argv[1:]]
    init_distributed(layouts[0][0], seed=1)
    for par, dtype in layouts:
        init_model_parallel(par, seed=1)
        lines = check_layout(par, dtype)
        dist.barrier()
        if dist.get_rank() == 0:
            dp = dist.get_world_size() // (par.tp * par.pp)
            print(f"POLICY OK tp={par.tp} pp={par.pp} vpp={par.vpp} dp={dp} {dtype}")
            print("\n".join(lines), flush=True)
    destroy_distributed()


if __name__ == "__main__":
    main()
