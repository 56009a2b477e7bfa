"""Fuzz every command's input parsing: any arguments (and any vote input file) end in success, or in
exit 2 with one line naming the problem (argparse's usage lines aside) -- never a traceback.

Arguments are drawn from each command's own flags and hostile values; paths point into a scratch
folder that holds no model, so no run gets past its checks into real work.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harmony_mcore.cli import main

# Relative values ("5GB", "../x") are paths too: commands run inside SCRATCH, one level below a
# temporary root, so nothing they write lands in the checkout or beside it.
SCRATCH = Path(tempfile.mkdtemp(prefix="harmony-fuzz-")) / "cwd"
SCRATCH.mkdir()
VALUES = ["", "0", "-1", "-5", "1", "3", "2.5", "nan", "inf", "-inf", "1e999", "abc", "../x", "x=y", "\u00e9\u4e2d",
          str(SCRATCH / "nope"), str(SCRATCH), "/dev/null", "5GB", "0B", "-3GB", "fp32", "bf16", "math500", "aime24"]


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.chdir(SCRATCH), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def _check(argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
    code, err = _run(argv)
    assert "Traceback" not in err, (argv, err)
    assert code in ok + (2,), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
        assert len(lines) == 1 and lines[0].startswith("harmony"), (argv, err)


def _argv(flags: dict[str, list[str] | None]):
    """Strategy: a subset of `flags` in any order, each with one of its values (None: a switch)."""
    def build(draw):
        chosen = draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=len(flags)))
        argv = []
        for flag in chosen:
            argv.append(flag)
            if flags[flag] is not None:
                argv.append(draw(st.sampled_from(flags[flag] + VALUES)))
        return argv
    return st.composite(lambda draw: build(draw))()


FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(_argv({"--strategy": ["harmonic-mean", "power-mean", "weighted-invariant", "self", "majority"],
              "--match": ["exact", "normalized"], "--k": [], "--lambda": [], "--pi": ["0.3"], "--min-score": [],
              "--output": [str(SCRATCH / "labels.jsonl")], "--rewards": [str(SCRATCH / "rewards.jsonl")],
              "--timeout": [], "--workers": []}))
def test_vote_arguments(argv):
    rollouts = SCRATCH / "rollouts.jsonl"
    rollouts.write_text('{"problem_id": 1, "view": 0, "answer": "2"}\n{"problem_id": 1, "view": 1, "answer": "2"}\n')
    _check(["vote", "--input", str(rollouts), *argv])


_ROW = st.fixed_dictionaries({}, optional={
    "problem_id": st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.booleans(), st.floats()),
    "view": st.one_of(st.integers(-1, 2), st.text(max_size=2), st.none(), st.floats()),
    "answer": st.one_of(st.text(max_size=5), st.integers(), st.floats(), st.none(), st.lists(st.integers(), max_size=2)),
    "response": st.one_of(st.text(max_size=20), st.just("\\boxed{3}"), st.integers()),
    "ground_truth": st.one_of(st.text(max_size=3), st.integers(), st.none(), st.dictionaries(st.text(), st.integers()))})
_LINE = st.one_of(_ROW.map(json.dumps), st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
                  st.sampled_from(["", "[]", "null", "{", "[" * 5000, '"\\ud800"', '{"problem_id": "\\udc00"}']))


@FUZZ
@given(st.lists(_LINE, max_size=6), st.sampled_from(["exact", "normalized"]))
def test_vote_input_files(lines, match):
    rollouts = SCRATCH / "fuzz.jsonl"
    rollouts.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    _check(["vote", "--input", str(rollouts), "--match", match, "--output", str(SCRATCH / "o.jsonl")])


@FUZZ
@given(st.sampled_from(["hf-to-mcore", "mcore-to-hf", "verify", "quantize"]),
       _argv({"--hf": [str(SCRATCH / "nope")], "--ckpt": [str(SCRATCH / "nope")], "--out": [str(SCRATCH / "out")],
              "--tp": [], "--pp": [], "--dtype": ["fp16"], "--overwrite": None, "--max-shard-size": [],
              "--hf-config": [], "--tol": [], "--prompt": [], "--format": ["fp8"], "--calib-file": []}))
def test_convert_arguments(command, argv):
    _check(["convert", command, *argv], ok=(0, 1))


@FUZZ
@given(_argv({"--model": [str(SCRATCH / "nope")], "--benchmarks": ["aime24", "aime24,,", ",", "nope"],
              "--path": ["aime24=/nonexistent", "gpqa-diamond=" + str(SCRATCH)], "--n": [], "--temperature": [],
              "--top-p": [], "--greedy": None, "--limit": [], "--max-tokens": [], "--max-prompt-tokens": [],
              "--seed": [], "--engine": ["torch"], "--dtype": [], "--tp": [], "--match-timeout": [],
              "--match-workers": [], "--out": [str(SCRATCH / "eval")]}))
def test_eval_arguments(argv):
    _check(["eval", *argv])


@FUZZ
@given(st.sampled_from(["show", "reframe", "list", "nope"]),
       _argv({"--n": [], "--path": [], "--view": ["solver", "reframe", "static"], "--model": [str(SCRATCH / "nope")],
              "--benchmark": ["aime24"], "--out": [str(SCRATCH / "r.jsonl"), str(SCRATCH / "r.txt")],
              "--strategy": ["free", "cycle"], "--limit": [], "--temperature": [], "--top-p": [], "--max-tokens": [],
              "--retries": [], "--seed": []}), st.sampled_from([[], ["aime24"], ["nope"]]))
def test_data_arguments(command, argv, positional):
    _check(["data", command, *positional, *argv])


_OVERRIDE = st.tuples(st.sampled_from(["seed", "steps", "algorithm.lr", "parallel.tp", "rollout.n", "data.benchmark",
                                       "+algorithm.consensus.stratgy", "output_dir", "eval.n", "parallel"]),
                      st.sampled_from(VALUES + ["[1,2", "{a: 1", "null", "${oops}"])).map("=".join)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(["train", "plan"]), st.sampled_from([[], ["cpu"], ["nope"], [str(SCRATCH / "x.yaml")]]),
       st.lists(_OVERRIDE, max_size=3), _argv({"--nproc": [], "--gpus": [], "--mfu": [], "--headroom": []}))
def test_train_and_plan_arguments(command, config, overrides, argv):
    (SCRATCH / "x.yaml").write_text("seed: [1, 2\n")
    tail = ["--print-config"] if command == "train" else ["--json"]  # train: parse only, never launch
    _check([command, *config, *overrides, *argv, *tail])
