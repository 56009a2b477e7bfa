"""torchrun worker for tests/test_plan.py: build each family's tiny model under each layout with the
policy's builder and record the parameter bytes every rank really holds.

usage: torchrun --nproc_per_node 4 plan_params.py LAYOUTS OUT.json
LAYOUTS: comma-separated TPxPPxVPP (VPP 0 = off), e.g. 2x2x0,2x1x0,1x2x0; DP fills the rest of the world.
"""

import json
import sys

import torch.distributed as dist

from harmony_mcore.config import ParallelConfig
from harmony_mcore.models.builder import build_chunks
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
