"""Bridge export time per step vs one all-gather of the same bytes (same run), ~0.5B model, TP=2, gloo.

    OMP_NUM_THREADS=1 PYTHONPATH=. torchrun --standalone --nproc_per_node 2 benchmarks/bridge_bench.py [--layers 24]

The model is Qwen2.5-0.5B-shaped (hidden 896, 24 layers, 14 heads / 2 KV heads, FFN 4864, vocab
151936, tied embeddings), fp32 on CPU (weights uninitialised: only bytes matter). Export = the full
stream (TP all-gathers, layout merge, HF split/rename, cast, buckets) consumed without an engine.
Baseline = one all_gather over the TP group of a flat buffer as large as this rank's shard, so its
output has the bytes of the whole model. Target: ratio <= 2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from harmony_mcore.bridge.export import WeightExporter
from harmony_mcore.config import ParallelConfig
from harmony_mcore.models.builder import build_chunks
from harmony_mcore.parallel import init_distributed

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "hidden_act": "silu",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=512)
    args = ap.parse_args()
    cfg = dict(QWEN25_05B, num_hidden_layers=args.layers)
    par = ParallelConfig(tp=2, pp=1)
    init_distributed(par, seed=0)
    from megatron.core import parallel_state as ps

    t = time.perf_counter()
    chunks = build_chunks(cfg, par, perform_initialization=False)
    build_s = time.perf_counter() - t
    exporter = WeightExporter(chunks, cfg, rollout_dtype=torch.float32, bucket_bytes=args.bucket_mb << 20)
    shard_numel = sum(p.numel() for c in chunks for p in c.parameters())
    group = ps.get_tensor_model_parallel_group()
    flat = torch.zeros(shard_numel)
    outs = [torch.empty_like(flat) for _ in range(ps.get_tensor_model_parallel_world_size())]

    def export_once() -> int:
        n = 0
        for bucket in exporter.buckets():
            n += sum(t.numel() * t.element_size() for _, t in bucket)
        return n

    def all_gather_once() -> int:
        dist.all_gather(outs, flat, group=group)
        return sum(o.numel() * o.element_size() for o in outs)

    export_once()  # warm-up (allocator, first collectives)
    exp, ag = [], []
    for _ in range(args.repeats):
        dist.barrier()
        t = time.perf_counter()
        exported_bytes = export_once()
        exp.append(time.perf_counter() - t)
        dist.barrier()
        t = time.perf_counter()
        gathered_bytes = all_gather_once()
        ag.append(time.perf_counter() - t)
    if dist.get_rank() == 0:
        e, a = statistics.median(exp), statistics.median(ag)
        print(f"model: Qwen2.5-0.5B shape, {args.layers} layers, {exporter.plan.total_bytes() / 1e9:.2f} GB fp32 "
              f"({len(exporter.plan.hf_tensors)} HF tensors, {exporter.plan.num_buckets} buckets of "
              f"{args.bucket_mb} MB), TP=2 gloo, build {build_s:.1f}s")
        print(f"export per step: {e:.3f}s (bytes {exported_bytes / 1e9:.2f} GB; runs {[round(x, 3) for x in exp]})")
        print(f"one all-gather of the same bytes: {a:.3f}s (bytes {gathered_bytes / 1e9:.2f} GB; "
              f"runs {[round(x, 3) for x in ag]})")
        print(f"RATIO export / all-gather = {e / a:.2f} median, {min(exp) / min(ag):.2f} best-of (target <= 2)")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
