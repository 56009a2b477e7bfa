"""The benchmarks of the paper as `Problem` records, with each source's answer normalised.

Shipped files live in harmony_mcore/data/files/ (origins, licences and checksums in SOURCES.md
there). GPQA-Diamond and MMLU-Pro are read from a path the user supplies (see SOURCES.md for where
to get them). `load_benchmark(name, path)` is the one entry point."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harmony_mcore.data.records import DataError, read_records

FILES = Path(__file__).resolve().parent / "files"
LETTERS = "ABCDEFGHIJ"
GPQA_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Problem:
    id: str
    question: str  # the problem text, without the options of a multiple-choice question
    answer: str  # ground truth, normalised per source (a letter for multiple choice)
    source: str  # the benchmark name
    choices: tuple[str, ...] = ()  # option texts, in letter order A, B, ...
    reframed: str | None = None  # a static reframing of `question` (same answer), if the data has one
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_choice(self) -> bool:
        return bool(self.choices) or "num_options" in self.metadata

    @property
    def num_options(self) -> int:
        return len(self.choices) or int(self.metadata.get("num_options", 0))


# ---- answer normalisation per source (pure functions) ----

def aime_answer(raw: Any) -> str:
    """AIME answers are integers 0..999, stored zero-padded ("025")."""
    text = str(raw).strip()
    if not text.isdigit():
        raise DataError(f"AIME answer {raw!r} is not an integer")
    return str(int(text))


def amc_answer(raw: Any) -> str:
    """AMC answers are stored as floats ("142.0"); integral ones become "142"."""
    value = float(str(raw).strip())
    return str(int(value)) if value.is_integer() else repr(value)


def gsm8k_answer(solution: str) -> str:
    """The text after the last "####", without thousands separators ("1,450,000" -> "1450000")."""
    if "####" not in solution:
        raise DataError(f"GSM8K solution has no '####' final answer: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def math_answer(raw: Any) -> str:
    """MATH answers are LaTeX, kept as written: the equivalence decides what matches."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)) or (isinstance(raw, float)
                                                                           and not math.isfinite(raw)):
        raise DataError(f"answer {raw!r:.80} is not text or a finite number")
    return str(raw).strip()


def _text(raw: Any, what: str) -> str:
    """A question (or a reframing) must be text: a list or a number would be voted on as its repr."""
    if not isinstance(raw, str) or not raw.strip():
        raise DataError(f"{what} must be non-empty text, got {raw!r:.80}")
    return raw.strip()


def choice_letter(raw: Any, num_options: int) -> str:
    """A letter among the first `num_options`, from "B", "(B)", "b" or an int index."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    else:
        m = re.fullmatch(r"\s*\(?([A-Ja-j])\)?\.?\s*", str(raw))
        if not m:
            raise DataError(f"answer {raw!r} is not an option letter A-{LETTERS[num_options - 1]}")
        index = LETTERS.index(m.group(1).upper())
    if not 0 <= index < num_options:
        raise DataError(f"answer {raw!r} is outside the {num_options} options")
    return LETTERS[index]


# ---- loaders ----

def _ttrl_rows(rows: list[dict], source: str, normalise: Callable[[Any], str], id_key: str = "id") -> list[Problem]:
    return [Problem(id=str(r.get(id_key, i)), question=r["prompt"], answer=normalise(r["answer"]), source=source,
                    metadata={k: v for k, v in r.items() if k in ("solution", "level", "type")})
            for i, r in enumerate(rows)]


def _math500(file: str, source: str) -> Callable[[Path | None], list[Problem]]:
    def load(path: Path | None) -> list[Problem]:
        rows = read_records(path or FILES / file)
        return _ttrl_rows(rows, source, math_answer, "unique_id" if "unique_id" in rows[0] else "id")
    return load


def _load_aime24(path: Path | None) -> list[Problem]:
    return _ttrl_rows(read_records(path or FILES / "aime24_ttrl.json"), "aime24", aime_answer)


def _load_amc(path: Path | None) -> list[Problem]:
    return _ttrl_rows(read_records(path or FILES / "amc_ttrl.json"), "amc", amc_answer)


def _load_gsm8k(path: Path | None) -> list[Problem]:
    rows = read_records(path or FILES / "gsm8k_test.jsonl")
    return [Problem(id=str(i), question=r["question"], answer=gsm8k_answer(r["answer"]), source="gsm8k",
                    metadata={"solution": r["answer"]}) for i, r in enumerate(rows)]


def _load_math_train_reframed(path: Path | None) -> list[Problem]:
    columns = ["idx", "original_question", "rephrased_question", "solution", "level", "type"]
    rows = read_records(path or FILES / "coreward_math_train_pairs_qwen3-32b.parquet", columns=columns)
    return [Problem(id=str(r["idx"]), question=r["original_question"], answer=math_answer(r["solution"]),
                    source="math-train-reframed", reframed=r["rephrased_question"],
                    metadata={"level": r.get("level"), "type": r.get("type")}) for r in rows]


def _need_path(name: str, path: Path | None) -> Path:
    if path is None:
        raise DataError(f"benchmark {name!r} is not shipped (licence); download it and pass its path "
                        f"(data.path=... or --path ...); see harmony_mcore/data/files/SOURCES.md")
    return path


def _load_gpqa(path: Path | None) -> list[Problem]:
    rows = read_records(_need_path("gpqa-diamond", path), split="diamond")
    if rows and "Correct Answer" in rows[0]:
        return [_gpqa_official(r, i) for i, r in enumerate(rows)]
    if rows and "prompt" in rows[0]:
        # TTRL's GPQA-TTT export: options already shuffled into the prompt, answer = letter.
        return [Problem(id=str(r.get("id", i)), question=r["prompt"], answer=choice_letter(r["answer"], 4),
                        source="gpqa-diamond", metadata={"num_options": 4}) for i, r in enumerate(rows)]
    return _choice_rows(rows, "gpqa-diamond", max_options=4)


def _gpqa_official(row: dict, index: int) -> Problem:
    """The Hugging Face CSV lists the correct answer first; shuffle the four options with a seed
    derived from the record id, so the letter does not leak and the order is stable across runs
    and row orders."""
    record = str(row.get("Record ID") or index)
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    options = [str(o).strip() for o in options]
    order = list(range(4))
    random.Random(f"{GPQA_SHUFFLE_SEED}:{record}").shuffle(order)
    return Problem(id=record, question=str(row["Question"]).strip(), answer=LETTERS[order.index(0)],
                   source="gpqa-diamond", choices=tuple(options[j] for j in order),
                   metadata={k: row[k] for k in ("High-level domain", "Subdomain") if k in row})


def _load_mmlu_pro(path: Path | None) -> list[Problem]:
    return _choice_rows(read_records(_need_path("mmlu-pro", path)), "mmlu-pro", max_options=10)


def _choice_rows(rows: list[dict], source: str, max_options: int) -> list[Problem]:
    """Generic multiple choice: `question`, `options` (or `choices`) list, and `answer` (a letter)
    or `answer_index`. This is MMLU-Pro's schema."""
    problems = []
    for i, r in enumerate(rows):
        options = r.get("options", r.get("choices"))
        if not isinstance(options, (list, tuple)) or not 2 <= len(options) <= max_options:
            raise DataError(f"{source} row {i}: expected an `options` list of 2..{max_options} entries, "
                            f"got {options!r:.80}")
        raw = r["answer"] if r.get("answer") not in (None, "") else r.get("answer_index")
        if raw is None:
            raise DataError(f"{source} row {i}: no `answer` letter or `answer_index`")
        pid = r.get("question_id", r.get("id", i))
        meta = {k: r[k] for k in ("category", "src") if k in r}
        problems.append(Problem(id=str(pid), question=_text(r["question"], f"{source} row {i}: question"),
                                answer=choice_letter(raw, len(options)), source=source,
                                choices=tuple(str(o).strip() for o in options), reframed=r.get("reframed"),
                                metadata=meta))
    return problems


_QUESTION_KEYS = ("question", "problem", "prompt")
_ANSWER_KEYS = ("answer", "ground_truth", "solution")


def _load_file(path: Path | None) -> list[Problem]:
    """Any table with a question column (question/problem/prompt) and an answer column
    (answer/ground_truth/solution); multiple choice when it has an `options` list; an optional
    `reframed` column feeds the static-reframe view."""
    rows = read_records(_need_path("file", path))
    if not rows:
        raise DataError(f"{path}: no rows")
    if "options" in rows[0] or "choices" in rows[0]:
        return _choice_rows(rows, "file", max_options=len(LETTERS))
    qkey = next((k for k in _QUESTION_KEYS if k in rows[0]), None)
    akey = next((k for k in _ANSWER_KEYS if k in rows[0]), None)
    if qkey is None or akey is None:
        raise DataError(f"{path}: need a question column ({'/'.join(_QUESTION_KEYS)}) and an answer column "
                        f"({'/'.join(_ANSWER_KEYS)}); found {sorted(rows[0])}")
    return [Problem(id=str(r.get("id", i)), question=_text(r[qkey], f"{path} row {i}: {qkey}"),
                    answer=math_answer(r[akey]), source="file", reframed=r.get("reframed")) for i, r in enumerate(rows)]


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    load: Callable[[Path | None], list[Problem]]
    shipped: bool = True


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "MATH-500 (prm800k test split), 500 problems, LaTeX answers",
              _math500("math500_ttrl.json", "math500")),
    *[Benchmark(f"math500-l{k}", f"MATH-500 level {k}", _math500(f"math500_level{k}_ttrl.json", f"math500-l{k}"))
      for k in range(1, 6)],
    Benchmark("gsm8k", "GSM8K test, 1319 problems, integer answers", _load_gsm8k),
    Benchmark("aime24", "AIME 2024 I+II, 30 problems, integer answers", _load_aime24),
    Benchmark("amc", "AMC 2022+2023, 83 problems, numeric answers", _load_amc),
    Benchmark("math-train-reframed", "MATH train, 7500 problems with a Qwen3-32B static reframing",
              _load_math_train_reframed),
    Benchmark("gpqa-diamond", "GPQA-Diamond, 198 questions, 4 options (your gpqa_diamond.csv)", _load_gpqa,
              shipped=False),
    Benchmark("mmlu-pro", "MMLU-Pro test, 12032 questions, up to 10 options (your parquet/jsonl)", _load_mmlu_pro,
              shipped=False),
    Benchmark("file", "your own file: question + answer columns (+ options, + reframed)", _load_file,
              shipped=False),
]}


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """Problems of benchmark `name`, from the shipped file or from `path` when given."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)} (see `harmony data list`)")
    try:
        problems = BENCHMARKS[name].load(Path(path).expanduser() if path else None)
    except KeyError as e:
        raise DataError(f"benchmark {name!r}{f' ({path})' if path else ''}: a row has no {e} column; is this "
                        "the benchmark's file?") from None
    for p in problems:
        _text(p.question, f"benchmark {name!r} problem {p.id}: the question")
        if p.reframed is not None:
            _text(p.reframed, f"benchmark {name!r} problem {p.id}: the reframed question")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise DataError(f"benchmark {name!r}: problem ids are not unique; give each row a distinct `id`")
    return problems[:limit] if limit is not None else problems
