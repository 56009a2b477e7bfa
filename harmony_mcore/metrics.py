"""Run logging on rank 0: console (rich), JSONL per step in the run directory, wandb, PNG report.

Every record is one flat dict (numbers, plus a few strings such as the strategy in use). The JSONL
file is the source of truth: a resumed run rewrites it from the checkpoint's history, so it never
holds steps the checkpoint does not know about.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from harmony_mcore import device

# What the console line and the PNG report show (a key absent from a run is skipped).
CONSOLE_KEYS = {"reward/label_accuracy": "label_acc", "reward/coverage": "coverage",
                "reward/view_agreement": "agree", "reward/accuracy/view0": "acc_v0",
                "reward/accuracy/view1": "acc_v1", "reward/reward/view0": "r_v0", "reward/reward/view1": "r_v1",
                "loss": "loss", "grad_norm": "gnorm", "time/step_s": "s"}
PLOTS = (("pseudo-label accuracy / coverage", ("reward/label_accuracy", "reward/coverage", "reward/view_agreement")),
         ("sampled accuracy per view", ("reward/accuracy/view0", "reward/accuracy/view1")),
         ("reward per view", ("reward/reward/view0", "reward/reward/view1")),
         ("response length", ("length/view0", "length/view1")),
         ("loss / KL", ("loss", "view0/kl", "view1/kl")),
         ("seconds per phase", ("time/sync_s", "time/generate_s", "time/logprobs_s", "time/reward_s",
                                "time/update_s")))


class PhaseTimer:
    """Wall time per phase of one step; `on_phase(name)` is told when a phase starts."""

    def __init__(self, on_phase: Callable[[str], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.on_phase = on_phase
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        if self.on_phase:
            self.on_phase(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            device.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}_s": v for k, v in self.seconds.items()}
        out["time/step_s"] = time.perf_counter() - self.start
        return out


def mfu(tokens: int, seconds: float, params: int, gpus: int, peak_flops: float) -> float:
    """Model FLOPs utilisation of the update: 6·N FLOPs per token (forward + backward), the usual
    definition, so the number compares with other trainers'. Log-prob passes are not counted."""
    return 6.0 * params * tokens / max(seconds, 1e-9) / (gpus * peak_flops)


class RunLogger:
    def __init__(self, cfg, out: Path, *, enabled: bool):
        self.cfg, self.out, self.enabled = cfg, out, enabled
        self.history: list[dict[str, Any]] = []
        self.jsonl = out / "metrics.jsonl"
        self._wandb = None
        self._progress = None
        self._task = None
        self._step = 0
        self._params: int | None = None

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self, history: list[dict], *, resumed_from: int | None, total: int) -> None:
        self.history = list(history)
        if not self.enabled:
            return
        from harmony_mcore.config import to_yaml

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(to_yaml(self.cfg))
        tmp = self.jsonl.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        os.replace(tmp, self.jsonl)
        self._start_wandb()
        self._start_progress(total, resumed_from or 0)
        where = f"resumed at step {resumed_from}" if resumed_from else "starting"
        self.console(f"{self.cfg.name}: {where}, {total} steps; metrics in {self.jsonl}")

    def finish(self) -> dict[str, Any]:
        summary = summarise(self.history)
        if self.enabled:
            if self._progress:
                self._progress.stop()
            if self.cfg.log.plot and self.history:
                try:
                    plot_report(self.history, self.out / "report.png")
                    summary["report"] = str(self.out / "report.png")
                except Exception as e:  # noqa: BLE001 - a plotting problem must not fail a finished run
                    self.console(f"could not draw the report: {e}")
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if self._wandb:
                self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
                self._wandb.finish()
            self.console("summary: " + json.dumps(summary))
        return summary

    # ---- per step -------------------------------------------------------------------------------
    def timer(self) -> PhaseTimer:
        return PhaseTimer(self._on_phase if self._progress else None)

    def record(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if not self.enabled:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._wandb:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            step=int(metrics.get("step", 0)))
        self._step = int(metrics.get("step", self._step))
        if self._progress:
            self._progress.update(self._task, completed=self._step, description=f"step {self._step}")
        self.console(console_line(metrics))

    def add_mfu(self, metrics: dict[str, Any], tokens: int, hf_config: dict, world: int) -> None:
        """MFU of the update on GPU (H100 bf16 peak unless HARMONY_PEAK_TFLOPS says otherwise)."""
        if not device.on_gpu:
            return
        if self._params is None:
            from harmony_mcore.models.families import shape
            from harmony_mcore.plan import total_params

            self._params = total_params(shape(hf_config))
        peak = float(os.environ.get("HARMONY_PEAK_TFLOPS", "989")) * 1e12
        metrics["throughput/mfu"] = mfu(tokens, metrics["time/update_s"], self._params, world, peak)

    def console(self, text: str) -> None:
        if self.enabled:
            if self._progress:
                self._progress.console.print(text)
            else:
                print(f"[harmony] {text}", flush=True)

    # ---- internals ------------------------------------------------------------------------------
    def _on_phase(self, name: str) -> None:
        self._progress.update(self._task, description=f"step {self._step + 1}: {name}")

    def _start_progress(self, total: int, done: int) -> None:
        if not self.cfg.log.progress:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console()
        if not console.is_terminal:
            return  # logs and CI get plain lines
        self._progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console)
        self._task = self._progress.add_task("starting", total=total, completed=done)
        self._step = done
        self._progress.start()

    def _start_wandb(self) -> None:
        mode = os.environ.get("WANDB_MODE") or self.cfg.log.wandb
        if mode == "disabled":
            return
        try:
            import wandb

            id_file = self.out / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self._wandb = wandb.init(project=self.cfg.log.wandb_project, name=self.cfg.name, id=run_id,
                                     resume="allow", dir=str(self.out), mode=mode, config=asdict(self.cfg))
        except Exception as e:  # noqa: BLE001 - logging must never stop training
            self.console(f"wandb disabled ({type(e).__name__}: {e}); set log.wandb=disabled to silence this")


def console_line(m: dict[str, Any]) -> str:
    parts = [f"step {m.get('step')}"]
    if "strategy" in m:
        parts.append(str(m["strategy"]))
    parts += [f"{short}={m[k]:.3g}" for k, short in CONSOLE_KEYS.items() if isinstance(m.get(k), (int, float))]
    parts += [f"{k.split('/', 1)[1]}={v:.3f}" for k, v in m.items() if k.startswith("eval/") and "/math/avg@" in k]
    return "  ".join(parts)


def eval_key(history: list[dict]) -> str | None:
    keys = [k for r in history for k in r if k.startswith("eval/") and "/math/avg@" in k]
    return keys[0] if keys else None


def summarise(history: list[dict]) -> dict[str, Any]:
    """Eval accuracy (avg@n, math scorer) before training, at the last step and the best over the
    validations during training (the reference's protocol reports both), and the mean and last
    pseudo-label accuracy."""
    out: dict[str, Any] = {"steps": max((int(r.get("step", 0)) for r in history), default=0)}
    key = eval_key(history)
    if key:
        evals = [(r["step"], r[key]) for r in history if key in r]
        out.update({"eval_metric": key, "accuracy_before": evals[0][1],
                    "eval_steps": [s for s, _ in evals], "eval_curve": [v for _, v in evals]})
        during = [(v, s) for s, v in evals if s > 0]
        if during:  # a run stopped before its next evaluation has no "after" yet
            best, step = max(during, key=lambda e: (e[0], -e[1]))  # the earliest of equal bests
            out.update({"accuracy_last_step": during[-1][0], "accuracy_best_validation": best,
                        "best_validation_step": step})
    labels = [r["reward/label_accuracy"] for r in history if "reward/label_accuracy" in r]
    if labels:
        out["label_accuracy_mean"] = sum(labels) / len(labels)
        out["label_accuracy_last"] = labels[-1]
    return out


def report_line(summary: dict[str, Any]) -> str | None:
    """The end-of-run line: accuracy before, at the last step and best over validation, labelled."""
    if "accuracy_before" not in summary:
        return None
    line = f"accuracy before {summary['accuracy_before']:.3f} -> "
    if "accuracy_last_step" not in summary:
        line += f"no evaluation since (stopped at step {summary['steps']})"
    else:
        line += f"last step {summary['accuracy_last_step']:.3f}"
    if "accuracy_best_validation" in summary:
        line += (f", best validation {summary['accuracy_best_validation']:.3f} "
                 f"(step {summary['best_validation_step']})")
    return (line + f" ({summary['eval_metric']}); mean pseudo-label accuracy "
            f"{summary.get('label_accuracy_mean', float('nan')):.3f}")


def plot_report(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = eval_key(history)
    panels = ([("eval accuracy (" + key.split("/", 1)[1] + ")", (key,))] if key else []) + list(PLOTS)
    panels = [(t, ks) for t, ks in panels if any(k in r for r in history for k in ks)]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in history if isinstance(r.get(k), (int, float))]
            if pts:
                label = k if k.startswith("view") else k.split("/", 1)[-1]  # view0/kl vs view1/kl
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
