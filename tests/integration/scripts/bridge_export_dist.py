"""Bridge export under TP/PP on gloo (run by tests/integration/test_bridge_export.py).

torchrun --nproc_per_node N tests/integration/scripts/bridge_export_dist.py OUT_DIR TP PP [VPP]

For each tiny model (untied Qwen3, tied Llama, Qwen2 with q/k/v biases): one training step, then
- every rank saves its raw local shards (the test converts them offline, single process),
- every rank exports through WeightExporter (small buckets) and saves what it received,
- a torch engine synced through the exporter scores sequences like the Megatron model (1e-5),
  and check_sync catches a garbled weight.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from harmony_mcore.bridge.export import SyncError, WeightExporter, check_sync, policy_scorer
from harmony_mcore.config import AlgorithmConfig, ParallelConfig
from harmony_mcore.parallel import init_distributed
from harmony_mcore.policy import Policy
from harmony_mcore.rollout.torch_engine import TorchEngine
from tests.support.tiny import char_tokenizer, tiny_hf_config

SEQ = 12
BUCKET_BYTES = 20_000  # smaller than the embedding (128 x 64 x 4 B), larger than most layer tensors


def causal(seq: int) -> torch.Tensor:
    return torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool), diagonal=1)


def data(batches: list[torch.Tensor], chunks: int):
    """The schedule's data iterator: one per model chunk with virtual pipeline stages."""
    return iter(batches) if chunks == 1 else [iter(batches) for _ in range(chunks)]


def train_one_step(model, vocab: int) -> None:
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.pipeline_parallel import get_forward_backward_func

    g = torch.Generator().manual_seed(5)
    batches = data([torch.randint(0, vocab, (2, SEQ), generator=g) for _ in range(2)], len(model))

    def step(data, m):
        ids = next(data)
        out = m(ids, torch.arange(SEQ).expand(2, -1), causal(SEQ), labels=ids)
        return out, lambda o: (o.float().mean(), {"loss": o.float().mean().detach()})

    opt = torch.optim.AdamW([p for c in model for p in c.parameters()], lr=1e-2)
    for c in model:
        c.zero_grad_buffer()
    get_forward_backward_func()(forward_step_func=step, data_iterator=batches, model=model, num_microbatches=2,
                                seq_length=SEQ, micro_batch_size=2, forward_only=False)
    # finalize_model_grads, not just finish_grad_sync: it also all-reduces the qk-layernorm grads over
    # TP and the tied embedding's grads between first and last stage (replicas would drift apart).
    finalize_model_grads(model)
    for c in model:
        for p in c.parameters():
            p.grad = p.main_grad
    opt.step()


def megatron_logprobs(model, seqs: list[list[int]], vocab: int) -> list[torch.Tensor]:
    """log p(next token) from the Megatron pipeline (TP-gathered logits), on every rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    micro = torch.tensor(seqs).chunk(2)  # two micro-batches: the interleaved schedule needs a multiple of PP
    n, s = micro[0].shape

    def step(it, m):
        x = next(it)
        out = m(x, torch.arange(s).expand(n, -1), causal(s))

        def collect(o, non_loss_data=True):
            logits = gather_from_tensor_model_parallel_region(o)[..., :vocab].float()
            return torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        return out, collect

    res = get_forward_backward_func()(forward_step_func=step, data_iterator=data(list(micro), len(model)),
                                      model=model, num_microbatches=2, seq_length=s, micro_batch_size=n,
                                      forward_only=True, collect_non_loss_data=True)
    out = torch.cat(res) if ps.is_pipeline_last_stage(ignore_virtual=True) else torch.empty(2 * n, s - 1)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        group = ps.get_pipeline_model_parallel_group()
        dist.broadcast(out, src=dist.get_global_rank(group, ps.get_pipeline_model_parallel_world_size() - 1),
                       group=group)
    return list(out)


def check_model(tag: str, hf_cfg: dict, par: ParallelConfig, out_dir: Path, tok) -> None:
    from megatron.core import parallel_state as ps

    policy = Policy(hf_cfg, par, AlgorithmConfig(), reference=False)
    model = policy.model
    train_one_step(model, hf_cfg["vocab_size"])

    rank = dist.get_rank()
    raw = {}
    for c in model:
        inner = c.module
        offset = inner.decoder.layers[0].layer_number - 1
        raw.update({(n, offset): p.detach().clone() for n, p in inner.named_parameters()})
    torch.save({"tp": ps.get_tensor_model_parallel_rank(), "pp": ps.get_pipeline_model_parallel_rank(), "raw": raw},
               out_dir / f"{tag}_raw_r{rank}.pt")

    exporter = WeightExporter(model, hf_cfg, rollout_dtype=torch.float32, bucket_bytes=BUCKET_BYTES)
    buckets = [[(n, t.clone()) for n, t in b] for b in exporter.buckets()]
    torch.save({"buckets": buckets, "planned": [(h.name, h.shape, h.bucket) for h in exporter.plan.hf_tensors]},
               out_dir / f"{tag}_export_r{rank}.pt")

    engine = TorchEngine.from_hf_config(hf_cfg, tok, device="cpu")
    timings = exporter.sync(engine)
    assert set(timings) >= {"sync/export_s", "sync/load_s", "sync/wake_s"}, timings
    g = torch.Generator().manual_seed(9)
    seqs = torch.randint(0, hf_cfg["vocab_size"], (4, SEQ), generator=g).tolist()
    diff = check_sync(engine, lambda s: megatron_logprobs(model, s, hf_cfg["vocab_size"]), seqs, tolerance=1e-5)
    diff_policy = check_sync(engine, policy_scorer(policy), seqs, tolerance=1e-5)
    print(f"[rank {rank}] {tag}: engine vs megatron log-prob max diff {diff:.2e} (via Policy.logprobs "
          f"{diff_policy:.2e})", flush=True)

    with torch.no_grad():  # a garbled weight after sync must be caught
        engine.model.model.norm.weight.mul_(3.0)
    try:
        check_sync(engine, lambda s: megatron_logprobs(model, s, hf_cfg["vocab_size"]), seqs, tolerance=1e-3)
    except SyncError as e:
        assert "stale or garbled" in str(e)
    else:
        raise AssertionError("check_sync missed a garbled weight")


def main(out_dir: str, tp: int, pp: int, vpp: int | None) -> None:
    par = ParallelConfig(tp=tp, pp=pp, vpp=vpp)
    init_distributed(par, seed=1)
    tok = char_tokenizer()
    out = Path(out_dir)
    layers = pp * (vpp or 1)
    check_model("qwen3", tiny_hf_config("qwen3", num_hidden_layers=max(2, layers)), par, out, tok)
    check_model("llama_tied", tiny_hf_config("llama", tie_word_embeddings=True, num_hidden_layers=max(2, layers)),
                par, out, tok)
    if pp == 1:
        check_model("qwen2", tiny_hf_config("qwen2"), par, out, tok)
    dist.barrier()
    print("BRIDGE EXPORT OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
