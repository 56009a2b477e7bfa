import hashlib
import json
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from harmony_mcore.answers import Equivalence, extract_boxed
from harmony_mcore.consensus.strategies import get_strategy
from harmony_mcore.consensus.vote_cli import main

REAL = Path(__file__).parent / "data" / "qwen25math_math_cot_100_8samples.jsonl"
REPO = Path(__file__).resolve().parents[1]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


SYNTH = [
    {"problem_id": "b", "view": 0, "response": "So the answer is \\boxed{\\frac{1}{2}}.", "ground_truth": "1/2"},
    {"problem_id": "b", "view": 0, "response": "I get \\boxed{3}", "ground_truth": "1/2"},
    {"problem_id": "b", "view": 1, "response": "STRATEGY: Reverse ... \\boxed{\\dfrac12}", "ground_truth": "1/2"},
    {"problem_id": "b", "view": 1, "response": "no box here", "ground_truth": "1/2"},
    {"problem_id": 7, "view": 1, "answer": "4"},
    {"problem_id": 7, "view": 0, "answer": "4"},
    {"problem_id": 7, "view": 0, "answer": "5"},
    {"problem_id": 3, "view": 0, "answer": "x"},
    {"problem_id": 3, "view": 1, "answer": None},
]


def test_vote_end_to_end_on_synthetic_rollouts(tmp_path, capsys):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    out, rew = tmp_path / "labels.jsonl", tmp_path / "rewards.jsonl"
    assert main(["--input", inp, "--output", str(out), "--rewards", str(rew), "--match", "normalized"]) == 0
    labels = _read(out)
    assert [r["problem_id"] for r in labels] == [3, 7, "b"]  # sorted: integers, then strings
    assert labels[0] == {"problem_id": 3, "label": None, "score": None, "counts": [0, 0]}
    assert labels[1]["label"] == "4" and labels[1]["counts"] == [1, 1]
    assert labels[1]["score"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    # the label class holds \frac{1}{2} and \dfrac12 once each: the smaller string represents it
    assert labels[2] == {"problem_id": "b", "label": "\\dfrac12", "score": pytest.approx(0.5),
                         "counts": [1, 1], "ground_truth": "1/2", "correct": True}
    rewards = _read(rew)
    assert [(r["problem_id"], r["view"]) for r in rewards] == [(r["problem_id"], r["view"]) for r in SYNTH]
    assert [r["answer"] for r in rewards] == ["\\frac{1}{2}", "3", "\\dfrac12", None, "4", "4", "5", "x", None]
    assert [r["reward"] for r in rewards] == [1, 0, 1, 0, 1, 1, 0, 0, 0]
    err = capsys.readouterr().err.strip()
    assert err == ("harmony vote: 3 problems, 9 responses, coverage 0.667, pseudo-label accuracy 1.000 "
                   "(strategy harmonic-mean, match normalized)")


def test_vote_strategies_and_parameters(tmp_path, capsys):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    out = str(tmp_path / "l.jsonl")
    assert main(["--input", inp, "--output", out, "--match", "exact", "--strategy", "cross"]) == 0
    row7 = _read(out)[1]
    # view 0 (4, 5) is judged by view 1's majority (4); view 1 by view 0's tie 4 = 5 -> "4"
    assert row7["view_labels"] == ["4", "4"] and row7["view_scores"] == [1.0, 1.0]
    assert main(["--input", inp, "--output", out, "--match", "exact", "--strategy", "ttrl"]) == 0
    tie = lambda *xs: min(xs, key=lambda t: hashlib.blake2b(t.encode(), digest_size=8).digest())  # noqa: E731
    assert [r["label"] for r in _read(out)] == ["x", tie("4", "5"), tie("\\frac{1}{2}", "3")]  # ties: smaller digest
    assert main(["--input", inp, "--output", out, "--match", "exact", "--min-score", "0.6"]) == 0
    assert [r["label"] for r in _read(out)] == [None, "4", None]
    assert main(["--input", inp, "--output", out, "--strategy", "power-mean", "--lambda", "2", "--match", "exact"]) == 0
    hm = _read(out)
    assert main(["--input", inp, "--output", out, "--match", "exact"]) == 0
    assert _read(out) == hm
    three = _write(tmp_path / "k3.jsonl", SYNTH + [{"problem_id": 3, "view": 2, "answer": "x"}])
    assert main(["--input", three, "--output", out, "--strategy", "weighted-invariant", "--pi", "0.3",
                 "--match", "exact"]) == 2
    assert "exactly 2 views" in capsys.readouterr().err


@pytest.mark.parametrize("bad,msg", [
    ("{not json", "line 3: not valid JSON"),
    ("[1, 2]", "line 3: expected a JSON object"),
    ('{"view": 0, "answer": "1"}', "line 3: missing field problem_id"),
    ('{"problem_id": 1, "view": -1, "answer": "1"}', "line 3: view must be an integer >= 0"),
    ('{"problem_id": 1, "view": "0", "answer": "1"}', "line 3: view must be an integer"),
    ('{"problem_id": 1, "view": 0}', "line 3: needs a response"),
    ('{"problem_id": 1, "view": 0, "answer": ["1"]}', "line 3: answer must be a string"),
    ('{"problem_id": [1], "view": 0, "answer": "1"}', "line 3: problem_id must be"),
    ('{"problem_id": 1, "view": 0, "response": 5}', "line 3: response must be a string"),
    ('{"problem_id": "b", "view": 0, "answer": "1", "ground_truth": "7"}', "different ground_truth"),
    # non-standard JSON Python would read: NaN/inf answers could win a vote, a repeated key keeps the last
    ('{"problem_id": 1, "view": 0, "answer": NaN}', "line 3: not valid JSON (NaN is not a JSON number"),
    ('{"problem_id": 1, "view": 0, "answer": -Infinity}', "line 3: not valid JSON (-Infinity is not"),
    ('{"problem_id": 1, "view": 0, "answer": 1e999}', "line 3: not valid JSON (1e999 overflows"),
    ('{"problem_id": 1, "view": 0, "answer": "1", "answer": "2"}', "line 3: not valid JSON (key 'answer' is given"),
])
def test_malformed_rows_name_the_line_and_write_nothing(tmp_path, capsys, bad, msg):
    inp = _write(tmp_path / "r.jsonl", SYNTH[:1] + [""] + [bad] + SYNTH[1:])
    out, rew = tmp_path / "labels.jsonl", tmp_path / "rewards.jsonl"
    out.write_text("previous run\n")
    assert main(["--input", inp, "--output", str(out), "--rewards", str(rew), "--match", "exact"]) == 2
    assert msg in capsys.readouterr().err
    assert out.read_text() == "previous run\n" and not rew.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl", "r.jsonl"]


def test_argument_errors(tmp_path, capsys):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    for argv, msg in [(["--k", "2"], "--k and --lambda apply to --strategy power-mean"),
                      (["--strategy", "power-mean"], "exactly one of --k or --lambda"),
                      (["--pi", "0.3"], "--pi applies to --strategy weighted-invariant"),
                      (["--strategy", "harmonic"], "invalid choice")]:
        with pytest.raises(SystemExit) as e:
            main(["--input", inp, "--output", str(tmp_path / "o.jsonl"), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "cannot read --input" in capsys.readouterr().err
    gap = _write(tmp_path / "gap.jsonl", [{"problem_id": 1, "view": 0, "answer": "1"},
                                          {"problem_id": 1, "view": 2, "answer": "1"}])
    assert main(["--input", gap, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "views 0, 2 are present" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", inp, "--output", str(tmp_path / "no" / "o.jsonl")])
    assert "does not exist" in capsys.readouterr().err


def test_harmony_vote_command_runs(tmp_path):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    proc = subprocess.run([sys.executable, "-m", "harmony_mcore.cli", "vote", "--input", inp, "--output",
                           str(tmp_path / "l.jsonl"), "--match", "exact"], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "3 problems, 9 responses, coverage 0.333" in proc.stderr  # exact: \frac{1}{2} vs \dfrac12 split
    assert len(_read(tmp_path / "l.jsonl")) == 3


def _argmax_set(views):
    """Independent harmonic-mean argmax with exact rationals (before the class-id tie-break)."""
    best, tied = None, set()
    for a in {c for v in views for c in v if c is not None}:
        n = [v.count(a) for v in views]
        if min(n) == 0:
            continue
        key = (Fraction(len(views)) / sum(Fraction(len(v), c) for v, c in zip(views, n)), sum(n))
        if best is None or key > best:
            best, tied = key, {a}
        elif key == best:
            tied.add(a)
    return tied


def test_vote_on_real_model_outputs(tmp_path, capsys):
    """100 MATH problems x 8 real samples: samples 0-3 as the solver view, 4-7 as a second view."""
    problems = [json.loads(line) for line in REAL.read_text().splitlines()]
    rows = [{"problem_id": p["idx"], "view": j // 4, "response": resp, "ground_truth": p["gt"]}
            for p in problems for j, resp in enumerate(p["code"])]
    inp = _write(tmp_path / "r.jsonl", rows)
    out, rew = tmp_path / "labels.jsonl", tmp_path / "rewards.jsonl"
    assert main(["--input", inp, "--output", str(out), "--rewards", str(rew), "--workers", "1"]) == 0
    summary = capsys.readouterr().err
    labels = {r["problem_id"]: r for r in _read(out)}
    rewards = _read(rew)

    # the same computation, single process, straight from the answers and strategies
    correct, majority_correct = [], []
    majority = get_strategy("majority")
    with Equivalence("math", workers=1) as eq:
        for p in problems:
            answers = [extract_boxed(r) for r in p["code"]]
            cls = eq.classes(answers)
            top = majority([cls[:4], cls[4:]]).label
            majority_correct.append(top is not None and eq.equal(answers[cls.index(top)], p["gt"]))
            tied = _argmax_set([cls[:4], cls[4:]])
            row = labels[p["idx"]]
            if not tied:
                assert row["label"] is None
                correct.append(False)
                continue
            label_class = cls[[a.strip() if a else None for a in answers].index(row["label"])]
            assert label_class in tied
            assert row["correct"] == eq.equal(row["label"], p["gt"])
            correct.append(row["correct"])
            got = [r["reward"] for r in rewards if r["problem_id"] == p["idx"]]
            assert got == [float(c == label_class) for c in cls]
    accuracy = sum(correct) / len(correct)
    assert f"pseudo-label accuracy {accuracy:.3f}" in summary
    coverage = sum(r["label"] is not None for r in labels.values()) / len(labels)
    assert f"100 problems, 800 responses, coverage {coverage:.3f}" in summary
    assert accuracy > 0.85  # the file's `score` flags give mean@8 0.91; maj@8 is 0.93

    # majority over both views is maj@8: 0.93 on this file (docs/consensus.md)
    assert abs(sum(majority_correct) / len(majority_correct) - 0.93) <= 0.02


def test_vote_does_not_import_torch(tmp_path):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    code = ("import sys; from harmony_mcore.consensus.vote_cli import main; "
            f"main(['--input', {inp!r}, '--output', {str(tmp_path / 'l.jsonl')!r}, '--match', 'exact']); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("strategy", ["harmonic-mean", "self"])
def test_labels_and_rewards_do_not_depend_on_row_order(tmp_path, strategy):
    """Shuffled rows of the real outputs give the same labels, and each row the same reward. The
    file has exact ties (e.g. two answers with 2 of 4 votes in each view), which a row-order
    tie-break would settle differently under a shuffle."""
    problems = [json.loads(line) for line in REAL.read_text().splitlines()]
    rows = [{"problem_id": p["idx"], "view": j // 4, "response": resp, "ground_truth": p["gt"]}
            for p in problems for j, resp in enumerate(p["code"])]
    results = []
    for seed in range(4):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        inp = _write(tmp_path / f"r{seed}.jsonl", [rows[i] for i in order])
        out, rew = tmp_path / f"l{seed}.jsonl", tmp_path / f"w{seed}.jsonl"
        assert main(["--input", inp, "--output", str(out), "--rewards", str(rew), "--match", "normalized",
                     "--strategy", strategy]) == 0
        by_row = [None] * len(rows)
        for pos, r in zip(order, _read(rew)):
            by_row[pos] = r["reward"]
        results.append((_read(out), by_row))
    assert all(r == results[0] for r in results[1:])


# ---- nothing lost: aliasing, links, special files, failures -------------------------------------

def _snapshot(folder):
    return {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() else None) for p in sorted(folder.iterdir())}


def test_outputs_never_replace_the_input_each_other_links_or_special_files(tmp_path, capsys):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    (tmp_path / "old.jsonl").write_text("earlier labels\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "old.jsonl")
    (tmp_path / "hard.jsonl").hardlink_to(tmp_path / "r.jsonl")
    (tmp_path / "dir").mkdir()
    before = _snapshot(tmp_path)
    cases = [["--output", inp], ["--output", str(tmp_path / "o.jsonl"), "--rewards", inp],
             ["--output", str(tmp_path / "o.jsonl"), "--rewards", str(tmp_path / "o.jsonl")],
             ["--output", str(tmp_path / "hard.jsonl")],  # the input under another name
             ["--output", str(tmp_path / "sub" / ".." / "r.jsonl")],
             ["--output", str(tmp_path / "link.jsonl")], ["--output", str(tmp_path / "dir")],
             ["--output", "/dev/null"]]
    for extra in cases:
        with pytest.raises(SystemExit) as e:
            main(["--input", inp, "--match", "exact", *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("harmony vote"), extra
    assert _snapshot(tmp_path) == before


def test_both_outputs_or_neither(tmp_path, monkeypatch, capsys):
    import os as os_module

    from harmony_mcore.consensus import vote_cli

    inp = _write(tmp_path / "r.jsonl", SYNTH)
    out, rew = tmp_path / "labels.jsonl", tmp_path / "rewards.jsonl"
    out.write_text("old labels\n")
    real_replace = os_module.replace
    calls = []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(vote_cli.os, "replace", second_rename_fails)
    assert main(["--input", inp, "--match", "exact", "--output", str(out), "--rewards", str(rew)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    assert out.read_text() == "old labels\n" and not rew.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl", "r.jsonl"]  # no temporary files


def test_outputs_are_normal_files_respecting_the_umask(tmp_path):
    import os as os_module

    inp = _write(tmp_path / "r.jsonl", SYNTH)
    old = os_module.umask(0o027)
    try:
        assert main(["--input", inp, "--match", "exact", "--output", str(tmp_path / "o.jsonl")]) == 0
    finally:
        os_module.umask(old)
    assert (tmp_path / "o.jsonl").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("content, msg", [
    (b'{"problem_id": 1, "view": 0, "answer": "\xff\xfe"}\n', "not UTF-8"),
    (b'{"problem_id": 1, "view": 0, "answer": "\\ud800"}\n', "lone UTF-16 surrogate"),
    (b"[" * 100000 + b"\n", "nested too deeply"),
])
def test_undecodable_input_is_a_clear_error(tmp_path, capsys, content, msg):
    (tmp_path / "r.jsonl").write_bytes(content)
    assert main(["--input", str(tmp_path / "r.jsonl"), "--match", "exact", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_non_finite_numbers_are_refused(tmp_path, capsys):
    inp = _write(tmp_path / "r.jsonl", SYNTH)
    for extra in (["--strategy", "power-mean", "--k", "nan"], ["--min-score", "inf"], ["--timeout", "nan"]):
        with pytest.raises(SystemExit) as e:
            main(["--input", inp, "--output", str(tmp_path / "o"), *extra])
        assert e.value.code == 2 and "finite" in capsys.readouterr().err
