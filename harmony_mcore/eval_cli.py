"""`harmony eval`: sample the solver view of benchmarks and report avg@n, pass@k and maj@k.

The command line of harmony_mcore.evaluation (which the trainer also calls).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from harmony_mcore import evaluation
from harmony_mcore.cli import int_at_least, number_in
from harmony_mcore.config import ConfigError
from harmony_mcore.data.benchmarks import BENCHMARKS, DataError, load_benchmark
from harmony_mcore.data.prompts import PROMPT_SETS, solver_messages
from harmony_mcore.dtypes import DTYPES


def _parse_paths(items: Sequence[str]) -> dict[str, str]:
    paths = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in BENCHMARKS:
            raise DataError(f"--path {item!r}: write BENCHMARK=PATH, e.g. --path gpqa-diamond=/data/gpqa_diamond.csv")
        paths[name] = value
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmony eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder, or a Megatron-Core checkpoint (converted into OUT/hf_model)")
    p.add_argument("--hf-config", default=None, help="HF folder the checkpoint started from (if not next to it)")
    p.add_argument("--benchmarks", default="math500", help="comma-separated names (harmony data list)")
    p.add_argument("--path", action="append", default=[], metavar="BENCH=PATH",
                   help="data file for a benchmark that is not shipped (gpqa-diamond, mmlu-pro, file)")
    p.add_argument("--n", type=int_at_least(1), default=16, help="samples per problem")
    p.add_argument("--temperature", type=number_in(0), default=0.8)
    p.add_argument("--top-p", type=number_in(0, 1, above=True), default=0.95)
    p.add_argument("--greedy", action="store_true", help="one greedy sample per problem instead of n samples")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="first N problems of each benchmark")
    p.add_argument("--max-tokens", type=int_at_least(1), default=3072, help="response length limit")
    p.add_argument("--max-prompt-tokens", type=int_at_least(1), default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "vllm"])
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument("--tp", type=int_at_least(1), default=1, help="vLLM tensor parallel size")
    p.add_argument("--match-timeout", type=number_in(0, above=True), default=2.0,
                   help="seconds per math-verify comparison")
    p.add_argument("--match-workers", type=int_at_least(1), default=2, help="math-verify worker processes")
    p.add_argument("--prompts", default="harmony", choices=PROMPT_SETS,
                   help="solver prompt: ours, or the reference code's (as the `reference` training preset)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = evaluation.EvalSettings(n=args.n, temperature=args.temperature, top_p=args.top_p, greedy=args.greedy,
                            max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, seed=args.seed,
                            limit=args.limit, match_timeout_s=args.match_timeout,
                            match_workers=args.match_workers, prompts=args.prompts)
    try:
        if settings.n < 1 or settings.max_tokens < 1 or (args.limit is not None and args.limit < 1):
            raise DataError("--n, --max-tokens and --limit must be >= 1")
        paths = _parse_paths(args.path)
        names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        if not names:
            raise DataError(f"--benchmarks {args.benchmarks!r}: name at least one ({', '.join(BENCHMARKS)})")
        suites = {name: load_benchmark(name, paths.get(name), settings.limit) for name in names}
        for problem in (p for problems in suites.values() for p in problems):
            solver_messages(problem, prompts=settings.prompts)  # a prompt set that does not fit fails here
        model = evaluation.hf_model_dir(args.model, args.out, args.hf_config)
        engine, tokenizer = evaluation.load_engine(model, args.engine, args.dtype, tp=args.tp,
                                        max_model_len=args.max_prompt_tokens + args.max_tokens, seed=args.seed)
    except (DataError, ConfigError) as e:
        print(f"harmony eval: {e}", file=sys.stderr)
        return 2
    report = evaluation.evaluate(engine, tokenizer, suites, settings)
    out = evaluation.write_report(report, args.out)
    print(evaluation.markdown_table(report), end="")
    print(f"written: {out}/results.json, results.md, results.png, samples.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
