"""Weight sync on one GPU for a Qwen3-8B-shaped model, split into phases (run by gpu_bridge_check.sh).

Megatron policy (bf16, TP=PP=1, TE spec if available) -> WeightExporter -> torch engine (transformers,
bf16, same GPU); with --vllm also into a colocated vLLM engine. Prints per-phase seconds (median of
--repeats syncs): wake (weights to the GPU + KV wake), export (merge/split/rename/cast), load
(copy into the engine), sleep, other; peak GPU memory; and the engine-vs-Megatron log-prob max diff.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from harmony_mcore.bridge.export import WeightExporter, synced_time, check_sync
from harmony_mcore.config import ParallelConfig, RolloutConfig
from harmony_mcore.models.builder import build_chunks
from harmony_mcore import device
from harmony_mcore.parallel import init_distributed
from harmony_mcore.rollout.torch_engine import TorchEngine
from harmony_mcore.testing import char_tokenizer, tiny_hf_config

QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": False, "hidden_act": "silu", "eos_token_id": 151645, "bos_token_id": 151643,
}


def megatron_logprobs(model, seqs: list[list[int]], vocab: int) -> list[torch.Tensor]:
    dev = device.current()
    ids = torch.tensor(seqs, device=dev)
    n, s = ids.shape
    mask = torch.triu(torch.ones(1, 1, s, s, dtype=torch.bool, device=dev), diagonal=1)
    with torch.no_grad():
        logits = model(ids, torch.arange(s, device=dev).expand(n, -1), mask)[..., :vocab].float()
    return list(torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1))


def timed_syncs(exporter: WeightExporter, engine, repeats: int) -> dict[str, float]:
    rows = []
    for _ in range(repeats):
        t = synced_time()
        engine.sleep(1)
        sleep_s = synced_time() - t
        phases = exporter.sync(engine)
        phases["sync/sleep_s"] = sleep_s
        phases["sync/other_s"] = phases["sync/total_s"] - phases["sync/export_s"] - phases["sync/load_s"] \
            - phases["sync/wake_s"]
        rows.append(phases)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def report(name: str, ph: dict[str, float]) -> None:
    gb = ph["sync/bytes"] / 1e9
    print(f"[{name}] {gb:.3f} GB | wake {ph['sync/wake_s']:.2f}s | export {ph['sync/export_s']:.2f}s | "
          f"load {ph['sync/load_s']:.2f}s | other {ph['sync/other_s']:.2f}s | total {ph['sync/total_s']:.2f}s "
          f"({gb / ph['sync/total_s']:.1f} GB/s) | sleep {ph['sync/sleep_s']:.2f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--vllm", action="store_true", help="also time a colocated vLLM engine (needs vllm)")
    ap.add_argument("--tiny", action="store_true", help="a tiny fp32 model: checks the script itself on CPU")
    args = ap.parse_args()
    cfg = tiny_hf_config("qwen3") if args.tiny else dict(QWEN3_8B, num_hidden_layers=args.layers)
    dtype, torch_dtype = ("fp32", torch.float32) if args.tiny else ("bf16", torch.bfloat16)
    init_distributed(ParallelConfig(tp=1, pp=1), seed=0)
    on_gpu = device.on_gpu
    print(f"device: {torch.cuda.get_device_name() if on_gpu else 'cpu'} | torch {torch.__version__}", flush=True)

    t = time.perf_counter()
    (model,) = build_chunks(cfg, ParallelConfig(tp=1, pp=1), dtype=dtype)
    model.eval()
    exporter = WeightExporter([model], cfg, rollout_dtype=torch_dtype, bucket_bytes=args.bucket_mb << 20)
    tok = char_tokenizer()
    engine = TorchEngine.from_hf_config(cfg, tok, dtype=torch_dtype, device=device.current())
    print(f"build: {time.perf_counter() - t:.1f}s, plan: {len(exporter.plan.hf_tensors)} HF tensors in "
          f"{exporter.plan.num_buckets} buckets of {args.bucket_mb} MB", flush=True)

    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    report("torch engine", timed_syncs(exporter, engine, args.repeats))
    if on_gpu:
        print(f"peak GPU memory during syncs: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    g = torch.Generator().manual_seed(0)
    # token ids the tokenizer knows: vLLM rejects prompts with ids beyond the tokenizer's vocabulary
    seqs = torch.randint(0, len(tok), (4, 128), generator=g).tolist()
    diff = check_sync(engine, lambda s: megatron_logprobs(model, s, cfg["vocab_size"]), seqs, tolerance=0.5)
    print(f"torch engine vs Megatron log-prob max diff ({dtype}): {diff:.2e}", flush=True)

    if args.vllm:
        from harmony_mcore.rollout.vllm_engine import VllmEngine

        del engine
        torch.cuda.empty_cache()
        with tempfile.TemporaryDirectory() as d:
            from transformers import AutoConfig

            AutoConfig.for_model("qwen3", **{k: v for k, v in cfg.items() if k != "model_type"}).save_pretrained(d)
            tok.save_pretrained(d)
            vllm = VllmEngine(RolloutConfig(tp=1, gpu_memory_utilization=0.35, sleep_level=1), d, dtype="bf16",
                              seed=0, max_model_len=1024)
            report("vllm engine", timed_syncs(exporter, vllm, args.repeats))
            diff = check_sync(vllm, lambda s: megatron_logprobs(model, s, cfg["vocab_size"]), seqs, tolerance=0.5)
            print(f"vLLM vs Megatron log-prob max diff (bf16): {diff:.4f}", flush=True)
    print("GPU BRIDGE CHECK DONE", flush=True)


if __name__ == "__main__":
    main()
