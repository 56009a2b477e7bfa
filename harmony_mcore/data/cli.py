"""`harmony data`: list the benchmarks, show problems and their prompts, generate static reframes.

    harmony data list
    harmony data show math500 --n 2 [--view reframe]
    harmony data reframe --model HF_DIR --benchmark math500 --out reframes.jsonl

`reframe` is the offline "auxiliary data" step: the Reframer rewrites each problem (the
reframe-and-solve prompt) and the rewrite, with its strategy, is written next to the original.
Train on it with data.benchmark=file data.path=reframes.jsonl data.views=static."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from harmony_mcore.cli import int_at_least, number_in
from harmony_mcore.config import ConfigError
from harmony_mcore.data.benchmarks import BENCHMARKS, DataError, Problem, load_benchmark
from harmony_mcore.data.prompts import STRATEGIES, parse_reframing, reframe_messages, view_messages
from harmony_mcore.dtypes import DTYPES


def cmd_list(args: argparse.Namespace) -> int:
    print(f"{'name':<21} {'rows':>5}  description")
    for name, bench in BENCHMARKS.items():
        rows = str(len(load_benchmark(name))) if bench.shipped else "path"
        print(f"{name:<21} {rows:>5}  {bench.description}")
    print("\n'path' = not shipped: pass --path FILE (see harmony_mcore/data/files/SOURCES.md)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    problems = load_benchmark(args.benchmark, args.path, args.n)
    for p in problems:
        print(f"=== {p.source} / {p.id}   answer: {p.answer}")
        messages = view_messages(p, args.view if args.view != "solver" else "solver-only",
                                 2 if args.view != "solver" else 1)[-1]
        for m in messages:
            print(f"--- {m['role']}\n{m['content']}")
        print()
    return 0


def strategy_plan(mode: str, count: int) -> list[str | None]:
    """The nudge of each row: `free` lets the model choose, `cycle` walks the eight strategies,
    a strategy name fixes it."""
    if mode == "free":
        return [None] * count
    if mode == "cycle":
        names = list(STRATEGIES)
        return [names[i % len(names)] for i in range(count)]
    if mode in STRATEGIES:
        return [mode] * count
    raise DataError(f"--strategy {mode!r}: use free, cycle or one of {', '.join(STRATEGIES)}")


def generate_reframes(engine: Any, tokenizer: Any, problems: Sequence[Problem], strategies: Sequence[str | None],
                      *, temperature: float, top_p: float, max_tokens: int, seed: int, retries: int) -> list[dict]:
    """One reframing per problem. A response without a rewritten problem is sampled again (new
    seed) up to `retries` times; rows still without one keep `reframed: null`."""
    from harmony_mcore.answers import extract_boxed
    from harmony_mcore.data.prompts import encode
    from harmony_mcore.rollout.base import SamplingParams

    rows: list[dict | None] = [None] * len(problems)
    todo = list(range(len(problems)))
    for attempt in range(retries + 1):
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                seed=seed + attempt, request_seeds=todo)
        requests = [encode(tokenizer, reframe_messages(problems[i], strategies[i])) for i in todo]
        results = engine.generate(requests, params)
        still = []
        for i, result in zip(todo, results):
            text = result.samples[0].text
            parsed = parse_reframing(text)
            p = problems[i]
            rows[i] = {"id": p.id, "question": p.question, "answer": p.answer, "reframed": parsed.rewritten,
                       "strategy": parsed.strategy, "requested_strategy": strategies[i],
                       "reframe_answer": extract_boxed(text), "response": text, "source": p.source,
                       **({"options": list(p.choices)} if p.choices else {})}
            if parsed.rewritten is None:
                still.append(i)
        todo = still
        if not todo:
            break
    return [r for r in rows if r is not None]


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
    elif out.suffix == ".jsonl":
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        raise DataError(f"--out {out}: use a .jsonl or .parquet file name")


def cmd_reframe(args: argparse.Namespace) -> int:
    from harmony_mcore.evaluation import hf_model_dir, load_engine

    out = Path(args.out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise DataError(f"--out {out}: use a .jsonl or .parquet file name")
    problems = load_benchmark(args.benchmark, args.path, args.limit)
    strategies = strategy_plan(args.strategy, len(problems))
    model = hf_model_dir(args.model, out.parent / f"{out.stem}_model")
    engine, tokenizer = load_engine(model, args.engine, args.dtype, max_model_len=4096 + args.max_tokens, seed=args.seed)
    rows = generate_reframes(engine, tokenizer, problems, strategies, temperature=args.temperature, top_p=args.top_p,
                             max_tokens=args.max_tokens, seed=args.seed, retries=args.retries)
    write_rows(rows, out)
    failed = [r["id"] for r in rows if r["reframed"] is None]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["strategy"] or "(none)"] = counts.get(r["strategy"] or "(none)", 0) + 1
    print(f"wrote {len(rows)} rows to {out}; strategies: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if failed:
        print(f"{len(failed)} rows have no REWRITTEN PROBLEM (reframed=null; raise --max-tokens or --retries): "
              + ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else ""), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmony data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the benchmark names").set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="print problems and the prompt of one view")
    show.add_argument("benchmark")
    show.add_argument("--n", type=int_at_least(1), default=3, help="how many problems")
    show.add_argument("--path", default=None, help="data file (benchmarks that are not shipped)")
    show.add_argument("--view", default="solver", choices=["solver", "reframe", "static"])
    show.set_defaults(func=cmd_show)
    ref = sub.add_parser("reframe", help="generate static reframings with a model")
    ref.add_argument("--model", required=True, help="Hugging Face model folder")
    ref.add_argument("--benchmark", required=True)
    ref.add_argument("--path", default=None)
    ref.add_argument("--out", required=True, help="output .jsonl or .parquet")
    ref.add_argument("--strategy", default="free", help="free | cycle | a strategy name")
    ref.add_argument("--limit", type=int_at_least(1), default=None)
    ref.add_argument("--temperature", type=number_in(0), default=0.7)
    ref.add_argument("--top-p", type=number_in(0, 1, above=True), default=1.0)
    ref.add_argument("--max-tokens", type=int_at_least(1), default=2048)
    ref.add_argument("--retries", type=int_at_least(0), default=2,
                     help="resample rows whose response has no rewritten problem")
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--engine", default="auto", choices=["auto", "torch", "vllm"])
    ref.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    ref.set_defaults(func=cmd_reframe)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DataError, ConfigError) as e:
        print(f"harmony data: {e}", file=sys.stderr)
        return 2
