import csv
import hashlib
import json
import re

import pytest

from harmony_mcore.data.benchmarks import (BENCHMARKS, FILES, DataError, aime_answer, amc_answer, choice_letter,
                                           gsm8k_answer, load_benchmark)



@pytest.mark.parametrize("name,rows", [("math500", 500), ("aime24", 30), ("amc", 83), ("gsm8k", 1319),
                                       ("math500-l1", 43), ("math500-l2", 90), ("math500-l3", 105),
                                       ("math500-l4", 128), ("math500-l5", 134), ("math-train-reframed", 7500)])
def test_row_counts(name, rows):
    problems = load_benchmark(name)
    assert len(problems) == rows
    assert all(p.question.strip() for p in problems)
    # Two MATH-train rows of the Co-Reward file have an empty ground truth (ids 5341, 5343).
    assert sum(not p.answer for p in problems) == (2 if name == "math-train-reframed" else 0)
    assert len({p.id for p in problems}) == rows


def test_levels_partition_math500():
    whole = {p.id: (p.question, p.answer) for p in load_benchmark("math500")}
    levels = {p.id: (p.question, p.answer) for k in range(1, 6) for p in load_benchmark(f"math500-l{k}")}
    assert levels == whole


def test_shipped_files_match_sources_checksums():
    table = (FILES / "SOURCES.md").read_text()
    rows = re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", table, flags=re.M)
    assert len(rows) == 10
    prompts = re.search(r"^## reference_prompts\.json.*?sha256 of the file: ([0-9a-f]{64})", table, flags=re.M | re.S)
    rows.append(("reference_prompts.json", prompts.group(1)))
    for name, digest in rows:
        assert hashlib.sha256((FILES / name).read_bytes()).hexdigest() == digest, name
    assert sorted(name for name, _ in rows) == sorted(p.name for p in FILES.iterdir() if p.name != "SOURCES.md")


def test_per_source_normalisation_on_real_rows():
    aime = load_benchmark("aime24")
    raw = json.loads((FILES / "aime24_ttrl.json").read_text())
    assert raw[1]["answer"] == "025" and aime[1].answer == "25"
    assert all(p.answer.isdigit() and not (len(p.answer) > 1 and p.answer[0] == "0") for p in aime)
    amc = load_benchmark("amc")
    assert amc[0].answer == "142" and all(re.fullmatch(r"-?\d+", p.answer) for p in amc)
    gsm = load_benchmark("gsm8k")
    assert gsm[0].answer == "18"
    assert "1450000" in {p.answer for p in gsm}  # "1,450,000" in the file
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in gsm)
    math = load_benchmark("math500")
    assert math[0].answer == r"\left( 3, \frac{\pi}{2} \right)"  # LaTeX kept as written


def test_normalisers_by_hand():
    assert aime_answer("007") == "7" and aime_answer("0") == "0" and aime_answer(204) == "204"
    assert amc_answer("142.0") == "142" and amc_answer(-4.0) == "-4" and amc_answer("2.5") == "2.5"
    assert gsm8k_answer("a #### 1,234") == "1234" and gsm8k_answer("x\n#### -3") == "-3"
    assert choice_letter("b", 4) == "B" and choice_letter("(C)", 4) == "C" and choice_letter(9, 10) == "J"
    with pytest.raises(DataError):
        aime_answer("abc")
    with pytest.raises(DataError):
        gsm8k_answer("no final answer")
    with pytest.raises(DataError, match="outside"):
        choice_letter("E", 4)


def test_static_reframes_present():
    p = load_benchmark("math-train-reframed", limit=3)
    assert len(p) == 3 and all(x.reframed and x.reframed != x.question for x in p)


def _gpqa_rows():
    # Invented questions in the schema of the gated Hugging Face CSV (no real GPQA content).
    return [{"Record ID": f"rec{i}", "Question": f"Which value is {i}?", "Correct Answer": f"right{i}",
             "Incorrect Answer 1": f"wrong{i}a", "Incorrect Answer 2": f"wrong{i}b",
             "Incorrect Answer 3": f"wrong{i}c", "Subdomain": "toy"} for i in range(40)]


def test_gpqa_csv_shuffled_with_fixed_seed(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    rows = _gpqa_rows()
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    problems = load_benchmark("gpqa-diamond", path)
    assert len(problems) == 40
    for i, p in enumerate(problems):
        assert p.num_options == 4 and p.choices["ABCD".index(p.answer)] == f"right{i}"
        assert sorted(p.choices) == sorted([f"right{i}", f"wrong{i}a", f"wrong{i}b", f"wrong{i}c"])
    assert len({p.answer for p in problems}) == 4  # the correct option does not stay in place
    # Same letters whatever the row order or the run.
    path2 = tmp_path / "reversed.csv"
    with path2.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[::-1])
    again = {p.id: (p.answer, p.choices) for p in load_benchmark("gpqa-diamond", path2)}
    assert again == {p.id: (p.answer, p.choices) for p in problems}


def _mmlu_rows():
    return [{"question_id": 70 + i, "question": f"q{i}?", "options": [f"opt{j}" for j in range(n)],
             "answer": "ABCDEFGHIJ"[i % n], "answer_index": i % n, "category": "math"}
            for i, n in enumerate([10, 10, 4, 7])]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "arrow-dir", "hub-dir"])
def test_mmlu_pro_from_every_format(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _mmlu_rows()
    if fmt == "jsonl":
        path = tmp_path / "mmlu.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "parquet":
        path = tmp_path / "test.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv":
        path = tmp_path / "mmlu.csv"
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "options": repr(r["options"])} for r in rows)
    elif fmt == "arrow-dir":  # datasets.save_to_disk layout: IPC stream + json metadata
        path = tmp_path / "saved"
        path.mkdir()
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        (path / "dataset_info.json").write_text("{}")
        (path / "state.json").write_text("{}")
    else:  # hub snapshot: test and validation parquet files side by side; test is chosen
        path = tmp_path / "MMLU-Pro"
        (path / "data").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), path / "data" / "test-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(rows[:1]), path / "data" / "validation-00000-of-00001.parquet")
    problems = load_benchmark("mmlu-pro", path)
    assert [p.num_options for p in problems] == [10, 10, 4, 7]
    assert [p.answer for p in problems] == ["A", "B", "C", "D"]
    assert problems[0].id == "70" and problems[1].choices[9] == "opt9"


def test_missing_and_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="SOURCES.md"):
        load_benchmark("gpqa-diamond")
    with pytest.raises(DataError, match="harmony data list"):
        load_benchmark("math5000")
    with pytest.raises(DataError, match="no such file"):
        load_benchmark("mmlu-pro", tmp_path / "nope.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "options": ["a", "b"], "answer": "C"}))
    with pytest.raises(DataError, match="outside"):
        load_benchmark("mmlu-pro", bad)
    nocols = tmp_path / "x.jsonl"
    nocols.write_text(json.dumps({"text": "q", "label": 1}))
    with pytest.raises(DataError, match="question column"):
        load_benchmark("file", nocols)


def _corrupt_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["1+1?"], "answer": ["2"]}), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = b"\xff" * 16
    path.write_bytes(bytes(data[:-12]))  # damaged and cut short: the footer is gone


@pytest.mark.parametrize("name, write, said", [
    ("a.parquet", _corrupt_parquet, "cannot read (Arrow"),
    ("a.csv", lambda p: p.write_text("question,answer\n" + "x" * 200_000 + ",2\n"), "not a readable CSV file"),
    ("a.jsonl", lambda p: p.write_text("[" * 100_000 + "\n"), "a.jsonl line 1: JSON nested too deeply"),
    ("a.jsonl", lambda p: p.write_text('{"question": "q", "answer": NaN}\n'), "NaN is not a JSON number"),
    ("a.jsonl", lambda p: p.write_text('{"question": "q", "answer": "1", "answer": "2"}\n'), "given twice"),
    ("a.json", lambda p: p.write_text('[{"question": "q", "answer": 1e999}]'), "overflows to infinity"),
    ("a.jsonl", lambda p: p.write_text('{"question": ["1+1?", "2+2?"], "answer": "2"}\n'), "must be non-empty text"),
    ("a.jsonl", lambda p: p.write_text('{"question": "1+1?", "answer": ["2"]}\n'), "is not text or a finite number"),
    ("a.jsonl", lambda p: p.write_text('[1, 2]\n'), "row 0 is a list"),
])
def test_damaged_or_hostile_data_files_are_one_line_errors(tmp_path, name, write, said):
    write(tmp_path / name)
    with pytest.raises(DataError) as e:
        load_benchmark("file", tmp_path / name)
    assert said in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_shipped_loader_on_a_foreign_file_names_the_missing_column(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(DataError, match="a row has no 'prompt' column"):
        load_benchmark("math500", tmp_path / "a.jsonl")


def test_user_file_with_static_reframes(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"p{i}", "problem": f"{i}+1?", "answer": str(i + 1),
                                          "reframed": f"one more than {i}?"}) for i in range(3)))
    problems = load_benchmark("file", path)
    assert [(p.id, p.answer, p.reframed) for p in problems][1] == ("p1", "2", "one more than 1?")


def test_registry_lists_the_paper_benchmarks():
    for name in ("math500", "gsm8k", "aime24", "amc", "gpqa-diamond", "mmlu-pro"):
        assert name in BENCHMARKS
