"""Run logging: JSONL rewritten on resume, summary before/after, PNG report, wandb offline."""

import json

from harmony_mcore.config import load_config
from harmony_mcore.metrics import RunLogger, console_line, mfu, report_line, summarise


def _step(step, acc, ev=None):
    m = {"step": step, "strategy": "harmonic-mean", "reward/label_accuracy": acc, "reward/coverage": 1.0,
         "time/generate_s": 1.0, "time/update_s": 2.0, "length/view0": 10.0 + step}
    if ev is not None:
        m["eval/toy-arith/math/avg@8"] = ev
    return m


def test_logger_files_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("cpu", ["log.wandb=offline"])
    log = RunLogger(cfg, tmp_path, enabled=True)
    log.start([], resumed_from=None, total=3)
    log.record({"step": 0, "eval/toy-arith/math/avg@8": 0.5})
    for s in (1, 2, 3):
        log.record(_step(s, 0.7 + s / 10, {1: 0.85, 3: 0.8}.get(s)))
    summary = log.finish()
    assert summary["accuracy_before"] == 0.5 and summary["accuracy_last_step"] == 0.8
    assert (summary["accuracy_best_validation"], summary["best_validation_step"]) == (0.85, 1)
    assert report_line(summary).startswith("accuracy before 0.500 -> last step 0.800, best validation 0.850 (step 1)")
    assert abs(summary["label_accuracy_mean"] - 0.9) < 1e-9
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3]
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy_last_step"] == 0.8
    assert (tmp_path / "wandb").is_dir() and (tmp_path / "wandb_id").read_text()

    # A resume from a checkpoint at step 1 rewrites the file: the later steps are dropped.
    again = RunLogger(load_config("cpu"), tmp_path, enabled=True)
    again.start(lines[:2], resumed_from=1, total=3)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_console_line_and_mfu():
    line = console_line(_step(4, 0.75, 0.6))
    assert line.startswith("step 4  harmonic-mean") and "label_acc=0.75" in line and "math/avg@8=0.600" in line
    assert summarise([]) == {"steps": 0} and report_line({"steps": 0}) is None
    # the evaluation before training is no validation result: best is over steps > 0 only
    only_before = summarise([{"step": 0, "eval/toy-arith/math/avg@8": 0.9}, _step(1, 0.5, 0.4)])
    assert only_before["accuracy_best_validation"] == 0.4 and only_before["accuracy_before"] == 0.9
    # 1B params, 1e5 tokens in 1 s on 8 GPUs of 1e15 FLOP/s: 6e14 / 8e15
    assert abs(mfu(100_000, 1.0, 10**9, 8, 1e15) - 0.075) < 1e-12
