"""torchrun worker for tests/integration/test_plan_dist.py: build each family's tiny model under each layout with the
policy's builder and record the parameter bytes every rank really holds; with PP, also run Megatron's
pipeline schedule and record how many micro-batches' activations a rank holds at once.

usage: torchrun --nproc_per_node 4 plan_params.py LAYOUTS OUT.json
LAYOUTS: comma-separated TPxPPxVPP (VPP 0 = off), e.g. 2x2x0,2x1x0,1x2x0; DP fills the rest of the world.
"""

import json
import sys

import torch
import torch.distributed as dist

from harmony_mcore.config import ParallelConfig
from harmony_mcore.models.builder import build_chunks, wrap_ddp
from harmony_mcore.parallel import destroy_distributed, init_distributed

# Tiny configs covering what changes the count: qkv bias (Qwen2), qk-norm and head_dim != hidden/heads
# (Qwen3), tied embeddings with and without PP, a vocabulary that needs padding.
BASE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu"}
FAMILIES = {
    "qwen2": BASE | {"architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True},
    "qwen3": BASE | {"architectures": ["Qwen3ForCausalLM"], "head_dim": 24, "tie_word_embeddings": False},
    "llama": BASE | {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True, "vocab_size": 130},
}


class _Tap(torch.autograd.Function):
    """Identity on a chunk's output whose backward marks that micro-batch's activations as released."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.counter["live"] -= 1
        return grad, None


def peak_inflight(hf: dict, parallel: ParallelConfig, microbatches: int, s: int = 8) -> int:
    """Most chunk-micro-batches whose forward ran and whose backward has not, in one training step."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    chunks = wrap_ddp(build_chunks(hf, parallel))
    counter = {"live": 0, "peak": 0}

    def step(data_iterator, model):
        ids = next(data_iterator)
        out = model(ids, torch.arange(s).expand(1, s), None)
        counter["live"] += 1
        counter["peak"] = max(counter["peak"], counter["live"])
        return _Tap.apply(out, counter), lambda o: (o.float().mean(), {})

    data = [torch.randint(0, hf["vocab_size"], (1, s)) for _ in range(microbatches)]
    iterators = [iter(data) for _ in chunks]
    get_forward_backward_func()(forward_step_func=step, data_iterator=iterators if len(chunks) > 1 else iterators[0],
                                model=chunks, num_microbatches=microbatches, seq_length=s, micro_batch_size=1,
                                forward_only=False)
    return counter["peak"]


def main() -> None:
    layouts, out = [tuple(map(int, lay.split("x"))) for lay in sys.argv[1].split(",")], sys.argv[2]
    from megatron.core import parallel_state as ps

    rows = []
    for tp, pp, vpp in layouts:
        parallel = ParallelConfig(tp=tp, pp=pp, vpp=vpp or None)
        init_distributed(parallel)
        mine = {"tp": tp, "pp": pp, "vpp": vpp, "tp_rank": ps.get_tensor_model_parallel_rank(),
                "pp_rank": ps.get_pipeline_model_parallel_rank()}
        for name, hf in FAMILIES.items():
            chunks = build_chunks(hf, parallel)
            mine[name] = sum(p.numel() * p.element_size() for c in chunks for p in c.parameters())
        if pp > 1:
            # Fewer micro-batches than the schedule's depth, and enough to reach its steady state.
            mine["inflight"] = {m: peak_inflight(FAMILIES["qwen3"], parallel, m) for m in ((2, 4) if vpp else (1, 4))}
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        rows += gathered
        ps.destroy_model_parallel()
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"families": FAMILIES, "ranks": rows}, f)
    destroy_distributed()


if __name__ == "__main__":
    main()
