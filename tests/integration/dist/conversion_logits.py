"""torchrun script: converted checkpoints loaded into Megatron at TP x PP give transformers' logits.

usage: torchrun --nproc_per_node TP*PP conversion_logits.py TP PP HF_DIR=CKPT_DIR [...]
With $SAVE_ROOT set, each loaded model is saved again with megatron's dist_checkpointing.save (as
the trainer does) under $SAVE_ROOT/<hf dir name>. With TP=PP=1 it also runs `harmony convert verify` on the first pair (passes) and on the HF model
in $OTHER_HF (same architecture, other weights) against the first checkpoint (fails).
Pipeline stages hand activations over with plain send/recv; TP logits are all-gathered.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from harmony_mcore.bridge.dist_ckpt import load_model_weights
from harmony_mcore.config import ParallelConfig
from harmony_mcore.models.builder import build_chunks
from harmony_mcore.parallel.distributed import init_distributed


def megatron_logits(model, ids):
    from megatron.core import parallel_state as ps

    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    if not ps.is_pipeline_first_stage():
        h = torch.empty(ids.shape[1], ids.shape[0], model.config.hidden_size)
        dist.recv(h, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(h)
    out = model(ids, pos, None)
    if not ps.is_pipeline_last_stage():
        dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    parts = [torch.empty_like(out) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def main():
    from megatron.core import parallel_state as ps
    from transformers import AutoModelForCausalLM

    tp, pp = int(sys.argv[1]), int(sys.argv[2])
    pairs = [tuple(Path(p) for p in a.split("=")) for a in sys.argv[3:]]
    parallel = ParallelConfig(tp=tp, pp=pp)
    init_distributed(parallel)
    for hf_dir, ckpt in pairs:
        config = json.loads((hf_dir / "config.json").read_text())
        (model,) = build_chunks(config, parallel)
        load_model_weights([model], ckpt)
        model.eval()
        ids = torch.randint(0, config["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            logits = megatron_logits(model, ids)
            if logits is not None:
                ref = AutoModelForCausalLM.from_pretrained(hf_dir).float().eval()(ids).logits
                diff = (logits[..., : config["vocab_size"]] - ref).abs().max().item()
                print(f"rank {dist.get_rank()} {config['architectures'][0]} TP={tp} PP={pp} "
                      f"padded vocab {logits.shape[-1]} max|diff| {diff:.2e}", flush=True)
                assert diff < 1e-5, diff
        if os.environ.get("SAVE_ROOT"):  # save as a trainer would: megatron's own dist-checkpointing
            from megatron.core import dist_checkpointing

            out = Path(os.environ["SAVE_ROOT"]) / hf_dir.name
            if dist.get_rank() == 0:
                out.mkdir(parents=True)
            dist.barrier()
            dist_checkpointing.save(model.sharded_state_dict(), str(out))
    if tp == pp == 1:
        from conversion import verify
        from conversion.cli import main as convert_main

        hf_a, ckpt_a = pairs[0]
        diff, how = verify.max_logit_diff(hf_a, ckpt_a)
        assert diff < 1e-5 and how == "tokenizer", (diff, how)
        assert convert_main(["verify", "--hf", str(hf_a), "--ckpt", str(ckpt_a)]) == 0
        # the same architecture with other weights must fail
        assert convert_main(["verify", "--hf", os.environ["OTHER_HF"], "--ckpt", str(ckpt_a)]) == 1
        print("verify OK", flush=True)
    dist.barrier()
    ps.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
