"""`harmony vote`: consensus pseudo-labels and rewards on saved rollouts.

Input (JSONL), one row per response: `problem_id` (string or integer), `view` (0 = solver,
1.. = reframes), `response` (full text; the last \\boxed{} is extracted) or `answer` (already
extracted; null = no answer), optional `ground_truth`. Outputs are written to temporary files and
renamed only once everything succeeded, so a failed run leaves no half-written file behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from harmony_mcore.answers.equivalence import MODES
from harmony_mcore.consensus.reducer import BatchResult, Record, compute_batch
from harmony_mcore.consensus.strategies import PER_VIEW, STRATEGIES, get_strategy
from harmony_mcore.loading import parse_json
from harmony_mcore.rewards import RewardOptions


class InputError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harmony vote", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, metavar="ROLLOUTS", help="rollouts JSONL")
    p.add_argument("--strategy", default="harmonic-mean", choices=list(STRATEGIES),
                   help="consensus strategy (default: harmonic-mean; see docs/algorithm.md)")
    p.add_argument("--match", default="math", choices=MODES,
                   help="answer equivalence used for voting and rewards (default: math)")
    p.add_argument("--k", type=float, metavar="K", help="power-mean exponent (0 = geometric, -1 = harmonic)")
    p.add_argument("--lambda", dest="lam", type=float, metavar="L", help="power-mean lambda (k = 1 - lambda)")
    p.add_argument("--pi", type=float, metavar="P", help="weighted-invariant weight of the solver view (default 0.5)")
    p.add_argument("--min-score", type=float, metavar="S", help="no label when the best score is below this")
    p.add_argument("--output", required=True, metavar="LABELS", help="labels JSONL: one row per problem")
    p.add_argument("--rewards", metavar="REWARDS", help="rewards JSONL: one row per input row, in input order")
    p.add_argument("--timeout", type=float, default=2.0, help="math-verify timeout per call, seconds")
    p.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    return p


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.strategy == "power-mean" and (a.k is None) == (a.lam is None):
        p.error("--strategy power-mean needs exactly one of --k or --lambda (k = 1 - lambda)")
    if a.strategy != "power-mean" and (a.k is not None or a.lam is not None):
        p.error("--k and --lambda apply to --strategy power-mean only")
    if a.pi is not None and a.strategy != "weighted-invariant":
        p.error("--pi applies to --strategy weighted-invariant only")
    if a.pi is not None and not 0 <= a.pi <= 1:
        p.error("--pi must be in [0, 1]")
    for name in ("k", "lam", "pi", "min_score", "timeout"):
        if getattr(a, name) is not None and not math.isfinite(getattr(a, name)):
            p.error(f"--{'lambda' if name == 'lam' else name.replace('_', '-')} must be a finite number")
    if a.timeout <= 0 or a.workers < 1:
        p.error("--timeout must be > 0 and --workers >= 1")
    problem = output_problem({"--input": a.input, "--output": a.output, "--rewards": a.rewards})
    if problem:
        p.error(problem)


def output_problem(files: dict[str, str | None]) -> str | None:
    """Why writing the outputs among `files` (flag -> path, --input first) could lose data (None:
    safe): one that is the input or another output (also through links), a symlink (replacing it
    would cut the link), not a regular file (a folder, a device, a pipe), or in a missing folder."""
    seen: list[tuple[str, str]] = []
    for flag, path in files.items():
        if path is None:
            continue
        if flag != "--input":
            p = Path(path)
            if p.is_symlink():
                return f"{flag} {path} is a symbolic link: give the path of the file itself (or another name)"
            if p.exists() and not p.is_file():
                return f"{flag} {path} exists and is not a regular file (a folder or a device): choose another path"
            if not p.resolve().parent.is_dir():
                return f"the folder of {flag} {path} does not exist: create it first"
        for other_flag, other in seen:
            if os.path.realpath(path) == os.path.realpath(other) or (
                    os.path.exists(path) and os.path.exists(other) and os.path.samefile(path, other)):
                return f"{flag} {path} is the same file as {other_flag}: writing it would destroy that; use distinct paths"
        seen.append((flag, path))
    return None


def _record(row, where: str) -> Record:
    """A Record from one input row; InputError names what is wrong and where."""
    from harmony_mcore.answers import extract_boxed

    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("problem_id", "view") if k not in row]
    if missing:
        raise InputError(f"{where}: missing field {', '.join(missing)} (need problem_id, view, response or answer)")
    pid, view = row["problem_id"], row["view"]
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise InputError(f"{where}: problem_id must be a string or an integer, got {pid!r}")
    if not isinstance(view, int) or isinstance(view, bool) or view < 0:
        raise InputError(f"{where}: view must be an integer >= 0 (0 = solver, 1.. = reframes), got {view!r}")
    if "answer" in row:
        answer = row["answer"]
        if answer is not None and (not isinstance(answer, (str, int, float)) or isinstance(answer, bool)):
            raise InputError(f"{where}: answer must be a string, a number or null, got {answer!r}")
        answer = None if answer is None else str(answer)
    elif "response" in row:
        if not isinstance(row["response"], str):
            raise InputError(f"{where}: response must be a string, got {type(row['response']).__name__}")
        answer = extract_boxed(row["response"])
    else:
        raise InputError(f"{where}: needs a response (full text) or an answer (already extracted)")
    gt = row.get("ground_truth")
    if gt is not None and (not isinstance(gt, (str, int, float)) or isinstance(gt, bool)):
        raise InputError(f"{where}: ground_truth must be a string, a number or null, got {gt!r}")
    for value in (pid, answer, gt):
        if isinstance(value, str) and not _encodable(value):
            raise InputError(f"{where}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
    return Record(pid, view, answer, None if gt is None else str(gt))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_rollouts(path: str) -> list[Record]:
    records = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read --input {path}: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, 1):
            if raw.strip():
                where = f"{path} line {n}"
                records.append(_record(parse_json(raw, where, InputError), where))
    if not records:
        raise InputError(f"{path}: no rollouts (expected one JSON object per line)")
    views = sorted({r.view for r in records})
    if views != list(range(len(views))):
        raise InputError(f"{path}: views {', '.join(map(str, views))} are present; number them 0, 1, .. "
                         f"without gaps (0 = solver), as an empty view would veto every label")
    gts: dict = {}
    for r in records:
        if r.ground_truth is not None and gts.setdefault(r.problem_id, r.ground_truth) != r.ground_truth:
            raise InputError(f"{path}: problem {r.problem_id!r} has rows with different ground_truth "
                             f"({gts[r.problem_id]!r} and {r.ground_truth!r})")
    return records


def _sort_key(pid):
    return (0, pid, "") if isinstance(pid, int) else (1, 0, pid)


def label_rows(result: BatchResult, per_view: bool) -> list[dict]:
    rows = []
    for p in sorted(result.problems, key=lambda p: _sort_key(p.problem_id)):
        row = {"problem_id": p.problem_id, "label": p.label_answers[0], "score": p.vote.scores[0],
               "counts": list(p.vote.counts[0])}
        if per_view:
            row["view_labels"] = list(p.label_answers)
            row["view_scores"] = list(p.vote.scores)
        if p.ground_truth is not None:
            row["ground_truth"] = p.ground_truth
            row["correct"] = p.label_correct[0]
        rows.append(row)
    return rows


def _write_jsonl_atomic(rows_by_path: dict[str, list[dict]]) -> None:
    """Write every file to a temporary sibling, then rename them all into place: all or none (if a
    rename fails, the files already renamed are put back as they were)."""
    umask = os.umask(0)
    os.umask(umask)
    temps, backups, done = [], {}, []
    try:
        for path, rows in rows_by_path.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", dir=Path(path).resolve().parent)
            temps.append((tmp, path))
            os.fchmod(fd, 0o666 & ~umask)  # a normal file, not mkstemp's 0600
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for tmp, path in temps:
            if os.path.exists(path):
                backups[path] = tmp + ".old"
                os.link(path, backups[path])
        try:
            for tmp, path in temps:
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in done:
                os.replace(backups[path], path) if path in backups else os.unlink(path)
            raise
    finally:
        for tmp in [t for t, _ in temps] + list(backups.values()):
            if os.path.exists(tmp):
                os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("harmony vote: interrupted; nothing was written", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    from harmony_mcore.answers import Equivalence

    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        records = read_rollouts(args.input)
    except InputError as e:
        print(f"harmony vote: {e}", file=sys.stderr)
        return 2
    strategy = get_strategy(args.strategy, k=args.k, lam=args.lam, pi=0.5 if args.pi is None else args.pi,
                            min_score=args.min_score)
    try:
        with Equivalence(args.match, timeout_s=args.timeout, workers=args.workers) as eq:
            result = compute_batch(records, equivalence=eq, strategy=strategy,
                                   options=RewardOptions(format_penalty=0.0, sharpness_coef=0.0))
    except ValueError as e:  # e.g. weighted-invariant on K != 2 views
        print(f"harmony vote: {e}", file=sys.stderr)
        return 2
    outputs = {args.output: label_rows(result, args.strategy in PER_VIEW)}
    if args.rewards:
        outputs[args.rewards] = [{"problem_id": r.problem_id, "view": r.view, "answer": a, "reward": w}
                                 for r, a, w in zip(records, result.answers, result.rewards)]
    try:
        _write_jsonl_atomic(outputs)
    except OSError as e:
        print(f"harmony vote: cannot write {e.filename or args.output}: {e.strerror}; nothing was written "
              "(check the folder's permissions and free space)", file=sys.stderr)
        return 2
    m = result.metrics
    summary = (f"harmony vote: {int(m['problems'])} problems, {int(m['responses'])} responses, "
               f"coverage {m['coverage']:.3f}")
    if "label_accuracy" in m:
        summary += f", pseudo-label accuracy {m['label_accuracy']:.3f}"
    if m.get("equivalence/degraded"):
        summary += (f", {int(m['equivalence/degraded'])} problem(s) over the math-verify budget matched "
                    "by normalized form")
    print(f"{summary} (strategy {args.strategy}, match {args.match})", file=sys.stderr)
    return 0
