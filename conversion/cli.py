"""`harmony convert`: HF <-> Megatron-Core checkpoints, logits verification, release quantization.

    harmony convert hf-to-mcore --hf DIR --out DIR [--tp N --pp M] [--dtype bf16] [--overwrite]
    harmony convert mcore-to-hf --ckpt DIR --out DIR [--hf-config DIR] [--dtype bf16] [--max-shard-size 5GB]
    harmony convert verify --hf DIR --ckpt DIR [--prompt TEXT ...] [--tol 1e-3] [--dtype fp32]
    harmony convert quantize --hf DIR --out DIR [--format fp8]
"""

from __future__ import annotations

import argparse
import sys

from harmony_mcore.bridge.files import ConversionError
from harmony_mcore.dtypes import DTYPES

DTYPE_CHOICES = tuple(DTYPES)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmony convert", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> Megatron-Core dist checkpoint (any TP/PP loads it)")
    a.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors)")
    a.add_argument("--out", required=True, help="output checkpoint directory")
    a.add_argument("--tp", type=int, default=1, help="TP the checkpoint is laid out for (any TP loads it)")
    a.add_argument("--pp", type=int, default=1, help="PP to check the model against (any PP loads it)")
    a.add_argument("--dtype", choices=DTYPE_CHOICES, help="cast weights (default: keep the HF dtype)")
    a.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    b = sub.add_parser("mcore-to-hf", help="Megatron-Core checkpoint -> HF safetensors shards + index")
    b.add_argument("--ckpt", required=True, help="checkpoint directory (converted, or a trainer save)")
    b.add_argument("--out", required=True, help="output HF model directory")
    b.add_argument("--hf-config", help="HF directory with config.json/tokenizer (default: the checkpoint's own "
                   "hf/, or for a trainer step the hf/ of its checkpoint folder)")
    b.add_argument("--dtype", choices=DTYPE_CHOICES, help="cast weights (default: keep the checkpoint dtype)")
    b.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    c = sub.add_parser("verify", help="compare logits of an HF model and a Megatron checkpoint")
    c.add_argument("--hf", required=True, help="HF model directory")
    c.add_argument("--ckpt", required=True, help="Megatron-Core checkpoint directory")
    c.add_argument("--hf-config", help="HF config the checkpoint was written from (default: its own hf/)")
    c.add_argument("--prompt", action="append", help="prompt text (repeatable; default: built-in prompts)")
    c.add_argument("--tol", type=float, help="max abs logit difference allowed (default 1e-3 in fp32, 0.5 in bf16)")
    c.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32", help="compute dtype (default fp32)")

    d = sub.add_parser("quantize", help="quantize an HF export with nvidia-modelopt (calibrates on the GPU, else the CPU)")
    d.add_argument("--hf", required=True, help="HF model directory (e.g. the output of mcore-to-hf)")
    d.add_argument("--out", required=True, help="output directory of the quantized HF checkpoint")
    d.add_argument("--format", default="fp8", choices=("fp8",), help="quantization format (default fp8)")
    d.add_argument("--calib-file", help="calibration prompts, one per line (default: a built-in math set)")
    d.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    # Imported here so that `--help` and argument errors stay instant.
    from harmony_mcore.bridge.dist_ckpt import CheckpointError
    from harmony_mcore.bridge.mapping import MappingError
    from harmony_mcore.bridge.safetensors_io import SafetensorsError
    from harmony_mcore.config import ConfigError

    try:
        if args.command == "hf-to-mcore":
            from harmony_mcore.bridge import hf_to_mcore
            hf_to_mcore.convert(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                                overwrite=args.overwrite)
        elif args.command == "mcore-to-hf":
            from harmony_mcore.bridge import mcore_to_hf
            mcore_to_hf.convert(args.ckpt, args.out, hf_config=args.hf_config, dtype=args.dtype,
                                max_shard_size=args.max_shard_size, overwrite=args.overwrite)
        elif args.command == "verify":
            from conversion import verify
            return verify.main(args)
        elif args.command == "quantize":
            from conversion import quantize
            quantize.quantize(args.hf, args.out, fmt=args.format, calib_file=args.calib_file,
                              overwrite=args.overwrite)
    except (ConversionError, ConfigError, MappingError, SafetensorsError, CheckpointError) as e:
        print(f"harmony convert {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
