"""The `harmony` command. Each subcommand lives in its own module and is imported only when run,
so `harmony vote` does not pay for importing megatron or vLLM."""

from __future__ import annotations

import argparse
import importlib
import math
import sys

# name -> (module, help). Each module exposes `main(argv: list[str]) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("harmony_mcore.train_cli", "run Self-Harmony training (CPU default or a config)"),
    "vote": ("harmony_mcore.consensus.vote_cli", "consensus pseudo-labels and rewards on saved rollouts"),
    "convert": ("conversion.cli", "convert checkpoints: hf-to-mcore, mcore-to-hf, verify, quantize"),
    "eval": ("harmony_mcore.eval_cli", "evaluate a model on benchmarks (avg@n, pass@k, maj@k)"),
    "data": ("harmony_mcore.data.cli", "inspect benchmark data, generate offline reframes"),
    "doctor": ("harmony_mcore.doctor", "check this environment against the supported matrix"),
    "plan": ("harmony_mcore.plan_cli", "memory and FLOPs plan of a config, without a GPU"),
}


def int_at_least(lo: int):
    """argparse type: an integer >= lo (argparse turns the message into `error: argument --x: ...`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    return parse


def number_in(lo: float, hi: float = math.inf, *, above: bool = False):
    """argparse type: a finite number in [lo, hi] (or (lo, hi] with `above`)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < lo or (above and value == lo) or value > hi:
            span = f"{'(' if above else '['}{lo:g}, {hi:g}]" if hi < math.inf else f"{'>' if above else '>='} {lo:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {'in ' if hi < math.inf else ''}{span}, "
                                             f"got {text}")
        return value
    return parse


def _usage() -> str:
    lines = ["usage: harmony <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "run `harmony <command> --help` for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from harmony_mcore import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"harmony: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
