"""Conversion benchmark: a random Qwen3-8B-shaped bf16 HF checkpoint converted both ways.

    python benchmarks/convert_bench.py [--shape 8b|4b|0.6b] [--dir /tmp/convert_bench] [--keep]

Reports each direction's wall time as a ratio to `cp` of its input files (+ `sync` of the copies,
since the converters fsync their output) measured in the same run, each direction's peak resident
memory (a fresh process each, ru_maxrss), and CPU seconds of both (on a busy machine wall time
includes waiting for a CPU; `cp` copies inside the kernel and needs little CPU). Targets: <= 2x copy time, <= 3 GB peak.
The page cache is not dropped (shared machine): copies and conversions read warm-ish files alike.
Falls back to the 4B shape when the disk is short (said in the output). Files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harmony_mcore.bridge.mapping import get_mapping  # noqa: E402
from harmony_mcore.bridge.safetensors_io import ShardedSafetensorsWriter  # noqa: E402

SHAPES = {  # config.json fields of the released models (Qwen/Qwen3-8B, -4B, -0.6B)
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
}


def qwen3_config(shape: str) -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "head_dim": 128,
            "rope_theta": 1000000, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "hidden_act": "silu",
            "torch_dtype": "bfloat16", **SHAPES[shape]}


def write_random_hf(path: Path, config: dict) -> int:
    """A bf16 HF checkpoint in 5 GB shards, filled from a random pool (contents do not matter)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    shapes = get_mapping(config).hf_shapes
    plan = [(n, torch.bfloat16, s) for n, s in shapes.items()]
    pool = torch.randn(2**26, generator=torch.Generator().manual_seed(0)).bfloat16()
    writer = ShardedSafetensorsWriter(path, plan, 5 * 2**30)
    for k, (name, _, shape) in enumerate(plan):
        numel = int(torch.Size(shape).numel())
        start = (k * 7919) % (pool.numel() // 2)
        if numel <= pool.numel() - start:
            t = pool[start:start + numel]
        else:
            t = pool.repeat(-(-numel // pool.numel()))[:numel]
        writer.write(name, t.view(shape))
    writer.finish()
    return writer.total_bytes


def child(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s = user + system, peak RSS GiB) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20


def copy(src: Path, dst: Path) -> tuple[float, float]:
    """(wall s, CPU s) of `cp -r` plus `sync` of the copied files (the converters fsync their output)."""
    wall, cpu, _ = child(["cp", "-r", str(src), str(dst)])
    wall2, cpu2, _ = child(["sync", *map(str, (p for p in dst.rglob("*") if p.is_file()))])
    return wall + wall2, cpu + cpu2


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="8b")
    ap.add_argument("--dir", default="/tmp/convert_bench")
    ap.add_argument("--keep", action="store_true", help="keep the files (default: delete them)")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shape = args.shape
    model_gb = {"8b": 16.4, "4b": 8.1, "0.6b": 1.2}
    free_gb = shutil.disk_usage(root).free / 2**30
    if shape == "8b" and free_gb < 3.5 * model_gb["8b"]:  # at most three copies on disk at once
        print(f"disk short ({free_gb:.0f} GiB free): using the Qwen3-4B shape instead of 8B")
        shape = "4b"
    load = os.getloadavg()
    print(f"shape Qwen3-{shape.upper()} bf16; {os.cpu_count()} CPUs, load average {load[0]:.1f} at start "
          "(shared machine: other users' jobs compete for CPU and disk)")
    try:
        t0 = time.perf_counter()
        nbytes = write_random_hf(root / "hf", qwen3_config(shape))
        print(f"random HF checkpoint: {nbytes / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s")

        cp_hf = copy(root / "hf", root / "hf_copy")
        shutil.rmtree(root / "hf_copy")
        conv = [sys.executable, "-m", "harmony_mcore.cli", "convert"]
        to_mc = child(conv + ["hf-to-mcore", "--hf", str(root / "hf"), "--out", str(root / "mc")])
        cp_mc = copy(root / "mc", root / "mc_copy")
        shutil.rmtree(root / "mc_copy")
        to_hf = child(conv + ["mcore-to-hf", "--ckpt", str(root / "mc"), "--out", str(root / "back")])

        rows = [("hf-to-mcore", *to_mc, *cp_hf), ("mcore-to-hf", *to_hf, *cp_mc)]
        print(f"\n{'direction':<12} {'wall s':>7} {'CPU s':>6} {'cp wall s':>9} {'cp CPU s':>8} {'wall ratio':>10} "
              f"{'peak RSS GiB':>12}")
        for name, wall, cpu, rss, cp_wall, cp_cpu in rows:
            print(f"{name:<12} {wall:7.1f} {cpu:6.1f} {cp_wall:9.1f} {cp_cpu:8.1f} {wall / cp_wall:10.2f} {rss:12.2f}")
        print(f"sizes: HF {dir_bytes(root / 'hf') / 2**30:.2f} GiB, mcore {dir_bytes(root / 'mc') / 2**30:.2f} GiB, "
              f"export {dir_bytes(root / 'back') / 2**30:.2f} GiB; load average at end {os.getloadavg()[0]:.1f}")
        ok = all(w / cw <= 2.0 and r <= 3.0 for _, w, _, r, cw, _ in rows)
        print("targets (<= 2x cp, <= 3 GiB):", "met" if ok else "NOT met")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
