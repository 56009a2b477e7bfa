"""`harmony convert verify`: logits of an HF model and of a Megatron-Core checkpoint on the same prompts.

Single process (TP=PP=1): the Megatron model is built by the policy's model builder, loaded with
`load_model_weights` (the path the trainer uses), and compared with transformers' model on each
prompt. Prints the max abs difference over the real (unpadded) vocabulary; exit code 1 above --tol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harmony_mcore.bridge.files import ConversionError, hf_dtype_kwargs, read_hf_config
from harmony_mcore.bridge.mcore_to_hf import find_checkpoint, find_hf_config_dir
from harmony_mcore.dtypes import torch_dtype

BUILTIN_PROMPTS = (
    "Question: what is 12 * 7 + 5? Answer:",
    "Solve for x: 3x - 4 = 11. Put the final answer in \\boxed{}.",
    "The capital of France is",
)


def _prompt_ids(hf_dir: Path, prompts: list[str], vocab: int) -> tuple[list[torch.Tensor], str]:
    if (hf_dir / "tokenizer.json").is_file() or (hf_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        ids = [tok(p)["input_ids"] for p in prompts]
        if all(ids):
            return [torch.tensor([x], dtype=torch.long) for x in ids], "tokenizer"
    # no tokenizer files (e.g. a test model): fixed pseudo-random token ids
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (1, 8 + 4 * k), generator=g) for k in range(len(prompts))], "random ids"


def max_logit_diff(hf_dir: str | Path, ckpt: str | Path, *, hf_config: str | Path | None = None,
                   prompts: list[str] | None = None, dtype: str = "fp32") -> tuple[float, str]:
    """(max abs logit difference, how the prompts were tokenized). Sets up a 1-process group if none."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from harmony_mcore.bridge.dist_ckpt import CheckpointReader, load_model_weights
    from harmony_mcore.config import ParallelConfig
    from harmony_mcore.models.builder import build_chunks
    from harmony_mcore.models.families import architecture
    from harmony_mcore import device
    from harmony_mcore.parallel.distributed import init_distributed

    hf_dir, ckpt = Path(hf_dir), find_checkpoint(Path(ckpt))
    # The model is built from the config the checkpoint was written from, never from --hf's: a
    # checkpoint that does not match the HF model must fail here, not be reinterpreted.
    cfg_dir = find_hf_config_dir(ckpt, Path(hf_config) if hf_config else None)
    config = read_hf_config(cfg_dir)
    damaged = CheckpointReader(ckpt).missing_data()  # damaged or unsafe: a clear error before any model is built
    if damaged:
        raise ConversionError(f"{ckpt}: incomplete checkpoint: {'; '.join(damaged[:3])}")
    if not dist.is_initialized():
        init_distributed(ParallelConfig(tp=1, pp=1))
    if dist.get_world_size() != 1:
        raise ConversionError("verify runs in a single process; launch it without torchrun")
    dt = torch_dtype(dtype)
    (model,) = build_chunks(config, ParallelConfig(tp=1, pp=1), dtype=dtype)
    load_model_weights([model], ckpt)
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, **hf_dtype_kwargs(dt)).to(device.current()).eval()
    vocab = int(config["vocab_size"])
    if int(hf.config.vocab_size) != vocab or architecture(hf.config) != architecture(config):
        raise ConversionError(f"--hf {hf_dir} ({architecture(hf.config)}, vocab {hf.config.vocab_size}) is not the "
                              f"model of the checkpoint's config {cfg_dir} ({architecture(config)}, vocab {vocab})")
    ids_list, how = _prompt_ids(hf_dir, list(prompts or BUILTIN_PROMPTS), vocab)
    worst = 0.0
    with torch.no_grad():
        for ids in ids_list:
            ids = ids.to(device.current())
            pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
            ours = model(ids, pos, None)[..., :vocab].float()
            ref = hf(ids).logits.float()
            worst = max(worst, (ours - ref).abs().max().item())
    return worst, how


def main(args: argparse.Namespace) -> int:
    tol = args.tol if args.tol is not None else (1e-3 if args.dtype == "fp32" else 0.5)
    diff, how = max_logit_diff(args.hf, args.ckpt, hf_config=args.hf_config, prompts=args.prompt, dtype=args.dtype)
    ok = diff <= tol
    print(f"max abs logit difference {diff:.3e} ({args.dtype}, prompts via {how}); tolerance {tol:.1e}: "
          f"{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
