"""`harmony train [CONFIG] [key=value ...]`: run Self-Harmony training.

With no CONFIG it runs the embedded CPU default (configs/cpu.yaml). Outside torchrun it checks the
config, prepares what must exist once (the toy model), and launches itself under
`torchrun --standalone` with the processes the layout needs; inside torchrun or Slurm+torchrun it
is one rank of the SPMD trainer (harmony_mcore.trainer).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from harmony_mcore.config import ConfigError, RunConfig, load_config, presets, to_yaml

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmony train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"presets: {', '.join(presets())}\nexample: harmony train cpu algorithm=ttrl seed=2")
    p.add_argument("config", nargs="?", default=None, help="preset name or .yaml file (default: cpu)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. algorithm.lr=1e-6 parallel=8b-2node")
    p.add_argument("--nproc", type=int, default=None, help="processes to launch on this machine "
                   "(default: tp*pp*dp, with dp=1 on CPU and all GPUs on a GPU machine)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def split_args(argv: list[str]) -> list[str]:
    """Let the config be omitted: `harmony train seed=3` means the CPU default with an override."""
    values = {i + 1 for i, a in enumerate(argv) if a == "--nproc"}  # `--nproc 3`: 3 is not the config
    first = next((a for i, a in enumerate(argv) if not a.startswith("-") and i not in values), None)
    if first is not None and "=" in first:
        return ["cpu", *argv]
    return argv


def nproc_for(cfg: RunConfig, given: int | None) -> int:
    import torch

    from harmony_mcore import device

    if given:
        return given
    tp_pp = cfg.parallel.tp * cfg.parallel.pp
    if cfg.parallel.dp:
        return tp_pp * cfg.parallel.dp
    return max(torch.cuda.device_count(), tp_pp) if device.on_gpu else tp_pp


def launch(argv: list[str], nproc: int) -> int:
    """Re-run this command under torchrun (the caller holds the run lock); signals reach the ranks
    (they checkpoint and exit), a second Ctrl-C kills them, and they die with this process."""
    import psutil

    from harmony_mcore.run_guard import LOCK_ENV, die_with_parent

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           LOCK_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")  # megatron and transformers are chatty on CPU
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "harmony_mcore.train_cli", *argv]
    # Own session: a terminal's Ctrl-C reaches only this process, which decides what the ranks get
    # (torchrun's agent would kill them after a grace period, maybe in the middle of a checkpoint).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)
    interrupts = 0

    def ranks() -> list:
        try:
            return psutil.Process(proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def forward(signum, frame):
        # Straight to the ranks (torchrun's children): torchrun's agent does not pass SIGUSR1 on.
        nonlocal interrupts
        interrupts += signum == signal.SIGINT
        if interrupts >= 2:
            print("harmony train: second Ctrl-C: killing the ranks (the last checkpoint is kept)", file=sys.stderr)
            for p in ranks() + [psutil.Process(proc.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            return
        if signum == signal.SIGINT:
            print("harmony train: stopping after this step (checkpoint, then exit); Ctrl-C again to kill now",
                  file=sys.stderr)
        for rank in ranks():
            with contextlib.suppress(psutil.NoSuchProcess):
                rank.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, forward)
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = split_args(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg))
            return 0
        from harmony_mcore.parallel.distributed import launch_env

        launched = launch_env()
        if launched.launched:
            from harmony_mcore.metrics import report_line
            from harmony_mcore.trainer import train

            summary = train(cfg)
            line = report_line(summary)
            if launched.rank == 0 and line:
                print(f"[harmony] {line}", flush=True)
            return 0
        from harmony_mcore.checkpoint_check import pick
        from harmony_mcore.preflight import preflight
        from harmony_mcore.run_guard import lock_output_dir, refuse_if_ranks_alive
        from harmony_mcore.trainer import checkpoint_root, resolve_model

        nproc = nproc_for(cfg, args.nproc)
        if cfg.model.hf_config:
            preflight(cfg, nproc, cfg.model.hf_config)  # a broken layout fails at once, before anything is written
        lock = lock_output_dir(Path(cfg.output_dir))  # one run per output_dir, until this process ends
        try:
            refuse_if_ranks_alive(Path(cfg.output_dir))
            _, hf_config = resolve_model(cfg)  # builds the toy model once, before any rank starts
            preflight(cfg, nproc, hf_config)
            pick(cfg.checkpoint.resume, checkpoint_root(cfg), log=lambda _: None)  # the ranks tell what they skip
            return launch(argv, nproc)
        finally:
            os.close(lock)
    except ConfigError as e:
        print(f"harmony train: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
