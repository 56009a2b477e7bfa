"""torchrun script (2 processes): checkpoints with Megatron's optimizer state, resume, resharding, atomicity.

Usage: torchrun --nproc_per_node 2 check_checkpoint.py DIR [--extras]

A run of STEPS GRPO steps of a tiny Qwen3 in bf16 with the distributed optimizer over DP=2, checkpointing after
step SAVE_AT, that resumes from DIR/ckpt like the trainer does. Every rank seeds its own RNG streams and draws
from them after each step (as a sampler would), and appends per step to DIR/log_rank<r>.jsonl: loss, grad norm,
the draws, a digest of its weight shards and of its optimizer state (fp32 main params, Adam moments, step counts).
The test compares these logs between an uninterrupted run and a killed + resumed one.
Env PAUSE_AT_STEP=k: every rank stops in the middle of step k (after the log-prob pass, before the update), writes
DIR/paused_rank<r> and sleeps, for the test to SIGKILL the whole process tree. A resumed run first saves the loaded
checkpoint again into DIR/resave (save -> load -> save).

--extras (after the run, same processes; rank 0 prints one "OK ..." line per check):
  atomic   a save whose optimizer part raises leaves no step_N, no temporary directory, and the previous loads;
  refuse   resuming into another dtype / without the distributed optimizer is a ConfigError naming both;
  reshard  fp32 TP2 -> TP1xDP2 and PP2(VPP2) -> PP1xDP2: save after 2 steps, resume in the other layout, 2 more
           steps; losses and grad norms equal the uninterrupted run's (RESHARD_TOL) and so do the final weights
           (both loaded into one layout from their checkpoints; max error < 1e-4 of the largest update).
"""

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from support import TINY, hf_model, load_hf_weights, make_batch

from harmony_mcore import checkpoint, checkpoint_check
from harmony_mcore.bridge.dist_ckpt import load_model_weights
from harmony_mcore.config import AlgorithmConfig, ConfigError, ParallelConfig
from harmony_mcore.parallel import destroy_distributed, init_distributed, init_model_parallel
from harmony_mcore.policy import Policy, ViewBatch

NAME, STEPS, SAVE_AT = "qwen3", 4, 2
ALGO = AlgorithmConfig(lr=1e-3, weight_decay=0.01, grad_clip=0.5, warmup_ratio=0.0, kl_coef=0.1)
DP2 = ParallelConfig(tp=1, pp=1, micro_batch_size=2, distributed_optimizer=True)
RESHARD_TOL = 1e-5  # relative, fp32: only the order of float reductions differs between layouts


def views(pol: Policy, step: int) -> list[ViewBatch]:
    """The same full batch on every rank, a function of the step (as the trainer's data position)."""
    ids, attn, resp = make_batch(100 + step)
    g = torch.Generator().manual_seed(step)
    B, T = ids.shape
    logp, _ = pol.logprobs(ids, attn)
    return [ViewBatch(ids, attn, resp, old_logp=logp + 0.1 * torch.randn(B, T, generator=g),
                      advantages=torch.randn(B, generator=g), ref_logp=logp + 0.1 * torch.randn(B, T, generator=g))]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def optimizer_tensors(pol: Policy):
    """Every inner torch optimizer's main params and state (exp_avg, exp_avg_sq, step), in order."""
    for opt in getattr(pol.optimizer, "chained_optimizers", [pol.optimizer]):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                state = opt.optimizer.state[p]
                yield p
                yield from (torch.as_tensor(state[k]) for k in sorted(state))


def make_policy(par: ParallelConfig, dtype: str) -> Policy:
    pol = Policy(TINY[NAME], par, ALGO, dtype=dtype, total_steps=STEPS, reference=False)
    load_hf_weights(pol, hf_model(NAME, 0).state_dict())
    return pol


def run(out: Path) -> None:
    rank = dist.get_rank()
    torch.manual_seed(1000 + rank)  # each rank its own streams: a restore must give each rank its own back
    random.seed(1000 + rank)
    pol = make_policy(DP2, "bf16")
    state = checkpoint.resume("auto", out / "ckpt", pol)
    start = state.get("step", 0)
    log = open(out / f"log_rank{rank}.jsonl", "a")
    if start:
        checkpoint.save(out / "resave", start, pol, state, keep_last=1)
        log.write(json.dumps({"resumed_at": start, "optimizer": digest(optimizer_tensors(pol))}) + "\n")
    pause_at = int(os.environ.get("PAUSE_AT_STEP", 0))
    for step in range(start, STEPS):
        batch = views(pol, step)
        if step + 1 == pause_at:
            (out / f"paused_rank{rank}").touch()
            time.sleep(3600)
        m = pol.train_step(batch, step)
        draws = torch.rand(3).tolist() + [random.random()]
        log.write(json.dumps({"step": step + 1, "loss": m["loss"], "grad_norm": m["grad_norm"], "draws": draws,
                              "weights": digest(p for mod in pol.modules for p in mod.parameters()),
                              "optimizer": digest(optimizer_tensors(pol))}) + "\n")
        log.flush()
        if step + 1 == SAVE_AT:
            checkpoint.save(out / "ckpt", step + 1, pol, {"step": step + 1}, keep_last=2)


def say(msg: str) -> None:
    dist.barrier()
    if dist.get_rank() == 0:
        print(msg, flush=True)


def check_atomic(out: Path) -> None:
    pol = make_policy(DP2, "bf16")
    root = out / "ckpt"
    before = checkpoint_check.latest(root)
    real_save = dist_checkpointing.save

    def save_model_then_fail(sharded, path, *a, **k):
        if path.endswith("optimizer"):
            raise OSError("disk full (injected)")
        return real_save(sharded, path, *a, **k)

    dist_checkpointing.save = save_model_then_fail
    try:
        checkpoint.save(root, 99, pol, {"step": 99}, keep_last=5)
        raise AssertionError("the injected failure did not reach the caller")
    except checkpoint.CheckpointError as e:
        assert "disk full" in str(e), e
    finally:
        dist_checkpointing.save = real_save
    dist.barrier()
    left = sorted(p.name for p in root.iterdir())
    assert not checkpoint.step_dir(root, 99).exists() and not any(n.startswith(".tmp") for n in left), left
    assert checkpoint_check.latest(root) == before, (checkpoint_check.latest(root), before)
    state = checkpoint.resume("auto", root, pol)
    assert before is not None and state["step"] == int(before.name.split("_")[1]), (state, before)
    say(f"OK atomic: a failed save left {left} and {before.name} loads")


def check_refuse(out: Path) -> None:
    pol = Policy(TINY[NAME], ParallelConfig(tp=1, pp=1, micro_batch_size=2, distributed_optimizer=False), ALGO,
                 dtype="fp32", total_steps=STEPS, reference=False)
    try:
        checkpoint.resume("auto", out / "ckpt", pol)
        raise AssertionError("a dtype and optimizer change was not refused")
    except ConfigError as e:
        msg = str(e)
        assert "dtype bf16 -> fp32" in msg and "distributed_optimizer True -> False" in msg, msg
        assert "model.dtype" in msg and "parallel.distributed_optimizer" in msg, msg
    say(f"OK refuse: {msg}")


def layout(spec: str) -> ParallelConfig:
    tp, pp, vpp = (int(x) if x != "-" else None for x in spec.split(","))
    return ParallelConfig(tp=tp, pp=pp, vpp=vpp, micro_batch_size=2, distributed_optimizer=True)


def check_reshard(out: Path, src: ParallelConfig, dst: ParallelConfig, tag: str) -> None:
    root = out / f"reshard_{tag}"
    init_model_parallel(src, seed=1)
    a = make_policy(src, "fp32")
    want = []
    for step in range(STEPS):
        want.append(a.train_step(views(a, step), step))
        if step + 1 in (SAVE_AT, STEPS):
            checkpoint.save(root / "a", step + 1, a, {"step": step + 1}, keep_last=2)
    init_model_parallel(dst, seed=1)
    b = make_policy(dst, "fp32")
    start = checkpoint.load(checkpoint.step_dir(root / "a", SAVE_AT), b)["step"]
    got = [b.train_step(views(b, step), step) for step in range(start, STEPS)]
    checkpoint.save(root / "b", STEPS, b, {"step": STEPS}, keep_last=1)
    errs = [abs(g[k] - w[k]) / abs(w[k]) for g, w in zip(got, want[start:]) for k in ("loss", "grad_norm")]
    # Final weights: both checkpoints loaded into this layout.
    wa, wb = make_policy(dst, "fp32"), make_policy(dst, "fp32")
    load_model_weights(wa.modules, checkpoint.step_dir(root / "a", STEPS) / "model")
    load_model_weights(wb.modules, checkpoint.step_dir(root / "b", STEPS) / "model")
    pairs = [(p, q) for ma, mb in zip(wa.modules, wb.modules) for p, q in zip(ma.parameters(), mb.parameters())]
    werr = max((p - q).abs().max().item() for p, q in pairs)
    moved = max((p.detach() - q.detach()).abs().max().item()
                for p, q in zip((p for m in make_policy(dst, "fp32").modules for p in m.parameters()),
                                (p for m in wa.modules for p in m.parameters())))
    assert max(errs) < RESHARD_TOL and werr < 1e-4 * moved, (tag, errs, werr, moved)
    say(f"OK reshard {tag}: steps {start + 1}..{STEPS} loss/grad-norm rel err {max(errs):.1e}, "
        f"weight err {werr:.1e} (update {moved:.1e})")


def main():
    out = Path(sys.argv[1])
    init_distributed(DP2, seed=1)
    run(out)
    if "--extras" in sys.argv:
        check_atomic(out)
        check_refuse(out)
        check_reshard(out, layout("2,1,-"), layout("1,1,-"), "tp2-to-tp1dp2")
        check_reshard(out, layout("1,2,2"), layout("1,1,-"), "pp2vpp2-to-pp1dp2")
    destroy_distributed()


if __name__ == "__main__":
    main()
