"""`harmony plan CONFIG [overrides]`: per-rank GPU memory and step FLOPs of a run, without a GPU.

The command line of harmony_mcore.plan (the formulas) and its table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from harmony_mcore.cli import int_at_least, number_in
from harmony_mcore.config import ConfigError, load_config
from harmony_mcore.plan import GiB, Assumptions, Layout, plan_run


def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def render(p: dict[str, Any], source: str, suggestion: tuple[Layout, float] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m, lay, r, w = p["model"], p["layout"], p["rollout"], p["workload"]
    console.print(f"[bold]{m['arch']}[/] {p['params_total'] / 1e9:.2f}B params (shape from {source}) on "
                  f"{lay['gpus']}x {p['hardware']['name']}: TP{lay['tp']} PP{lay['pp']}"
                  f"{' VPP' + str(lay['vpp']) if lay['vpp'] else ''} DP{lay['dp']}; "
                  f"{w['sequences']} sequences x {w['seq_len']} tokens per step, "
                  f"{p['microbatches_per_dp_rank']} micro-batches of {lay['micro_batch_size']} per DP rank")
    t = Table(title="GiB per GPU by pipeline stage (worst case: every sequence at full length)")
    t.add_column("")
    for st in p["stages"]:
        t.add_column(f"stage {st['stage']}", justify="right")
    dtype = {2: "bf16", 4: "fp32"}[p["param_bytes"]]
    rows = [(f"weights ({dtype})", "weights"), ("grads (fp32 main_grad)", "grads"),
            ("optimizer, plain", "optimizer_without_dist"), (f"optimizer, distributed over DP{lay['dp']}", "optimizer_with_dist"),
            ("reference on GPU", "reference_on_gpu"), (f"activations ({lay['recompute']} recompute)", "activations"),
            ("logits (last stage)", "logits"), ("peak: generate", "peak_generate"),
            ("peak: log-probs", "peak_logprob"), ("peak: train", "peak_train"), ("host memory", "host")]
    for label, key in rows:
        t.add_row(label, *(_gib(st[key]) for st in p["stages"]))
    console.print(t)
    console.print(f"rollout ({r['engine']}, TP{w['rollout_tp']}): weights {_gib(r['engine_weights'])} GiB/GPU "
                  f"within {_gib(r['memory'])} GiB; KV cache {_gib(max(r['kv_pool'], 0))} GiB holds "
                  f"{r['concurrent_sequences']} of the {r['sequences_per_engine']} sequences per engine "
                  f"-> {r['waves']} wave(s)")
    f, tf = p["flops"], p["time_floor_s"]
    console.print(f"FLOPs per step: generate {f['generate']:.3g}, log-probs {f['logprob']:.3g}, "
                  f"train {f['train']:.3g}; time floor at {p['assumptions']['mfu']:.0%} MFU: {tf['total']:.0f} s "
                  f"(generate {tf['generate']:.0f}, log-probs {tf['logprob']:.0f}, train {tf['train']:.0f})")
    console.print(f"host memory per node: {_gib(p['host_per_node'])} GiB (vLLM sleep copies, offloaded reference)")
    verdict = "[green]fits[/]" if p["fits"] else "[red]does not fit[/]"
    console.print(f"peak {_gib(p['peak'])} GiB ({p['binding_phase']}) vs limit {_gib(p['limit'])} GiB: {verdict}")
    for problem in p["problems"]:
        console.print(f"  - {problem}")
    if not p["fits"]:
        if suggestion:
            lay2, fraction = suggestion
            console.print(f"smallest layout that fits on these GPUs: {lay2.describe()}"
                          + (f", rollout.gpu_memory_utilization={fraction}" if fraction != w["memory_fraction"] else ""))
        else:
            console.print("no layout on these GPUs fits: use more GPUs or shorter sequences")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="harmony plan", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a preset name from configs/ or a YAML path")
    ap.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. parallel.tp=4")
    ap.add_argument("--gpus", type=int_at_least(1),
                    help="GPUs in the job (default: the preset's `fits` note, else TP*PP*DP)")
    ap.add_argument("--mfu", type=number_in(0, 1, above=True), default=Assumptions.mfu,
                    help="MFU for the step-time floor")
    ap.add_argument("--headroom", type=number_in(0, 1), default=Assumptions.headroom,
                    help="share of GPU memory kept free")
    ap.add_argument("--mean-seq-len", type=int_at_least(1),
                    help="average prompt+response tokens for FLOPs and time (default: the maximum)")
    ap.add_argument("--no-te", action="store_true", help="no Transformer Engine on the cluster: the local "
                    "spec's attention keeps the s x s scores, and no sequence parallelism")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)
    assumptions = Assumptions(mfu=args.mfu, headroom=args.headroom, transformer_engine=not args.no_te)
    try:
        cfg = load_config(args.config, args.overrides)
        p, source, suggestion = plan_run(cfg, args.gpus, assumptions, args.mean_seq_len)
    except ConfigError as e:
        print(f"harmony plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = p | {"shape_source": source, "suggestion": None}
        if suggestion:
            out["suggestion"] = asdict(suggestion[0]) | {"gpu_memory_utilization": suggestion[1]}
        print(json.dumps(out, indent=1))
    else:
        render(p, source, suggestion)
    return 0
