"""GPU check of the Megatron policy (one GPU): log-prob agreement with transformers, GRPO-step speed and MFU,
and a checkpoint round trip of Megatron's distributed optimizer (the same code path the CPU tests run under gloo).

Run through gpu_policy_check.sh. A Qwen3-1.7B-shaped model with random weights, bf16, 4096 tokens per
sequence. Prints one JSON line (prefix "RESULT ") with the numbers; exits non-zero when the log-probs
disagree with transformers beyond bf16 noise, or a step after reloading the checkpoint differs from the same
step before it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "policy")]  # the package, and the tests' weight loader

from harmony_mcore.config import AlgorithmConfig, ParallelConfig  # noqa: E402
from harmony_mcore.parallel import destroy_distributed, init_distributed  # noqa: E402
from harmony_mcore.policy import Policy, ViewBatch  # noqa: E402
from support import load_hf_weights  # noqa: E402

QWEN3_1P7B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2048,
              "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
              "max_position_embeddings": 40960, "hidden_act": "silu"}
SEQ = int(os.environ.get("SEQ", 4096))
ROWS = int(os.environ.get("ROWS", 8))  # sequences per GRPO step
STEPS = int(os.environ.get("STEPS", 3))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


def train_flops_per_token(c: dict, seq: int) -> float:
    """Forward + backward (3x a forward) model FLOPs per token, counted by `harmony plan`."""
    from harmony_mcore import plan
    from harmony_mcore.models import families

    return 3 * plan.forward_flops(families.shape(c), seq) / seq


def plan_estimate_gib(par: ParallelConfig, recompute: str) -> float:
    """`harmony plan`'s peak of the log-prob and train phases for this exact setup. No runtime overhead:
    max_memory_allocated sees neither the CUDA context nor NCCL; the local spec's attention is unfused."""
    from harmony_mcore import plan
    from harmony_mcore.models import families

    lay = plan.Layout(par.tp, par.pp, par.vpp, 1, par.sequence_parallel, par.distributed_optimizer, recompute,
                      par.micro_batch_size, par.offload_reference)
    work = plan.Workload(sequences=ROWS, seq_len=SEQ, response_len=SEQ - 512, logprob_passes=2, engine="torch",
                         rollout_tp=1, memory_fraction=0.5, sleep_level=1)
    st = plan.plan(families.shape(QWEN3_1P7B), lay, work,
                   a=plan.Assumptions(runtime_overhead=0, transformer_engine=False))["stages"][0]
    return max(st["peak_logprob"], st["peak_train"]) / 2**30


def batch(rows: int, seq: int, prompt: int, gen: torch.Generator):
    ids = torch.randint(0, QWEN3_1P7B["vocab_size"], (rows, seq), generator=gen)
    attn = torch.ones(rows, seq, dtype=torch.long)
    resp = torch.zeros(rows, seq, dtype=torch.long)
    resp[:, prompt:] = 1
    return ids, attn, resp


def logprob_agreement(policy: Policy, gen: torch.Generator) -> dict:
    """Same random weights in transformers (bf16, its default attention) and in Megatron: compare log-probs."""
    import transformers

    cfg = transformers.Qwen3Config(**{k: v for k, v in QWEN3_1P7B.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda"):
        hf = transformers.Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    load_hf_weights(policy, hf.state_dict())
    ids, attn, _ = batch(2, SEQ, 512, gen)
    mine, _ = policy.logprobs(ids, attn)
    with torch.no_grad():
        want = []
        for r in range(ids.shape[0]):
            logits = hf(ids[r:r + 1].cuda()).logits[0, :-1].float()
            want.append(torch.log_softmax(logits, -1).gather(-1, ids[r, 1:, None].cuda())[:, 0].cpu())
    want = torch.stack(want)
    diff = (mine[:, 1:] - want).abs()
    del hf
    torch.cuda.empty_cache()
    return {"logp_max_abs_diff": diff.max().item(), "logp_mean_abs_diff": diff.mean().item(),
            "logp_mean": want.mean().item()}


def checkpoint_roundtrip(policy: Policy, view: ViewBatch, step: int) -> dict:
    """Save (model + distributed optimizer + RNG), take a step, load the checkpoint back, take the same step:
    both must agree (GPU kernels may reduce in another order: bf16-level tolerance)."""
    from harmony_mcore import checkpoint

    with tempfile.TemporaryDirectory(dir=os.environ.get("CKPT_TMP")) as root:
        t0 = time.time()
        checkpoint.save(Path(root), step, policy, {"step": step}, keep_last=1)
        save_s = time.time() - t0
        first = policy.train_step([view], step)
        t0 = time.time()
        checkpoint.load(checkpoint.step_dir(Path(root), step), policy)
        load_s = time.time() - t0
        again = policy.train_step([view], step)
    errs = {k: abs(first[k] - again[k]) / max(abs(first[k]), 1e-12) for k in ("loss", "grad_norm")}
    return {"ckpt_save_s": round(save_s, 1), "ckpt_load_s": round(load_s, 1),
            "ckpt_step_rel_err": max(errs.values())}


def main() -> int:
    par = ParallelConfig(tp=1, pp=1, micro_batch_size=1, distributed_optimizer=True)
    init_distributed(par, seed=1)
    gen = torch.Generator().manual_seed(0)
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    t0 = time.time()
    policy = Policy(QWEN3_1P7B, par, AlgorithmConfig(lr=1e-6), dtype="bf16", total_steps=100, recompute="selective")
    build_s = time.time() - t0
    out = {"device": name, "seq": SEQ, "rows": ROWS, "build_s": round(build_s, 1)}
    out.update(logprob_agreement(policy, gen))

    ids, attn, resp = batch(ROWS, SEQ, 512, gen)
    torch.cuda.synchronize()
    peak_before = torch.cuda.max_memory_allocated()  # the transformers comparison above is not part of a step
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    old, _ = policy.logprobs(ids, attn)
    torch.cuda.synchronize()
    fwd_s = time.time() - t0
    ref, _ = policy.logprobs(ids, attn, reference=True)
    view = ViewBatch(ids, attn, resp, old_logp=old, advantages=torch.randn(ROWS, generator=gen), ref_logp=ref)
    times, metrics = [], {}
    for step in range(STEPS + 1):  # the first step warms up kernels and allocator
        torch.cuda.synchronize()
        t0 = time.time()
        metrics = policy.train_step([view], step)
        torch.cuda.synchronize()
        times.append(time.time() - t0)
    step_s = sum(times[1:]) / STEPS
    tokens = ROWS * SEQ
    flops = train_flops_per_token(QWEN3_1P7B, SEQ) * tokens / step_s
    out.update({"logprob_tokens_per_s": round(tokens / fwd_s), "step_s": round(step_s, 3),
                "train_tokens_per_s": round(tokens / step_s), "train_tflops": round(flops / 1e12, 1),
                "mfu": round(flops / peak, 4) if peak else None, "peak_mem_gib":
                round(max(peak_before, torch.cuda.max_memory_allocated()) / 2**30, 1),
                "step_peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "plan_peak_gib": round(plan_estimate_gib(par, "selective"), 2), "loss": metrics["loss"],
                "grad_norm": metrics["grad_norm"], "skipped": metrics["skipped"]})
    out.update(checkpoint_roundtrip(policy, view, STEPS + 1))
    print("RESULT " + json.dumps(out), flush=True)
    destroy_distributed()
    # bf16 over 28 layers with different attention kernels: expect mean |diff| ~1e-2; garbled weights give >1.
    ok = out["logp_mean_abs_diff"] < 0.1 and metrics["skipped"] == 0.0 and out["ckpt_step_rel_err"] < 1e-2
    print("GPU POLICY CHECK " + ("PASSED" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
