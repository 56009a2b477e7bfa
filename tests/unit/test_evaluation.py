import json

import pytest

from harmony_mcore.answers import Equivalence, extract_boxed, normalize
from harmony_mcore.data.benchmarks import Problem, load_benchmark
from harmony_mcore.evaluation import EvalSettings, evaluate, flat_metrics, score_problems, write_report
from harmony_mcore.rollout.base import FINISH_STOP, GenerationResult, Sample
from tests.support.datafiles import QWEN_OUTPUTS as REAL


@pytest.fixture(scope="module")
def equivalence():
    eq = Equivalence(mode="math", timeout_s=5.0, workers=1)
    yield eq
    eq.close()


class ScriptedEngine:
    """Returns fixed responses per request (by request order): enough to check scoring end to end."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.calls = []

    def generate(self, requests, params):
        self.calls.append(params)
        out = []
        for i, ids in enumerate(requests):
            texts = self.scripts[len(out)] if len(self.scripts) > len(out) else []
            assert len(texts) == params.n
            out.append(GenerationResult(list(ids), [Sample([], t, [], FINISH_STOP) for t in texts]))
        return out


class CharTok:
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % 1000 for c in text]}


def verdicts(problem, answers, equivalence):
    scored = score_problems([problem], [answers], equivalence)
    return [s.correct for s in scored["strict"]][0], [s.correct for s in scored["math"]][0]


def test_scorers_on_hand_checked_cases(equivalence):
    aime = load_benchmark("aime24")[1]  # "025" in the file
    amc = load_benchmark("amc")[0]  # "142.0" in the file
    gsm = next(p for p in load_benchmark("gsm8k") if p.answer == "1450000")
    math = load_benchmark("math500")[0]  # \left( 3, \frac{\pi}{2} \right)
    frac = next(p for p in load_benchmark("math500") if p.answer == "\\frac{14}{3}")
    mc = Problem(id="mc", question="q", answer="B", source="t", choices=("1", "2", "3", "4"))
    strict, mathv = verdicts(aime, ["25", "025", "26", None], equivalence)
    assert strict[0] and mathv[:3] == [True, True, False] and not mathv[3] and not strict[2]
    strict, mathv = verdicts(amc, ["142", "142.0", "\\frac{284}{2}", "141"], equivalence)
    assert strict[:2] == [True, True] and mathv == [True, True, True, False]
    strict, mathv = verdicts(gsm, ["1,450,000", "1450000", "1450000.0", "145000"], equivalence)
    assert strict[:2] == [True, True] and mathv == [True, True, True, False]
    strict, mathv = verdicts(math, ["(3, \\frac{\\pi}{2})", "\\left(3,\\frac{\\pi}{2}\\right)", "(3, \\pi)"],
                             equivalence)
    assert strict[:2] == [True, True] and mathv == [True, True, False] and not strict[2]
    strict, mathv = verdicts(frac, ["\\dfrac{14}{3}", "14/3", "4.6667", "\\frac{3}{14}"], equivalence)
    assert strict[0] and mathv[:2] == [True, True] and not mathv[3] and not strict[3]
    strict, mathv = verdicts(mc, ["B", "(B)", "\\text{B}", "C", None], equivalence)
    assert strict == mathv == [True, True, True, False, False]


@pytest.mark.parametrize("name", ["math500", "gsm8k", "aime24", "amc"])
def test_every_ground_truth_parses_and_equals_itself(name, equivalence):
    from math_verify import parse

    problems = load_benchmark(name)
    assert all(extract_boxed(f"\\boxed{{{p.answer}}}") == p.answer for p in problems)
    # math-verify reads every non-integer answer (integers: the loader tests check their form).
    latex = [p.answer for p in problems if not p.answer.lstrip("-").isdigit()]
    assert [a for a in latex if not parse(f"${a}$", parsing_timeout=None)] == []
    # The answer, its normalised form and a padded copy form one class under the equivalence.
    classes = equivalence.classes_batch([[p.answer, normalize(p.answer), f" {p.answer} "] for p in problems])
    assert all(c[0] == c[1] == c[2] == 0 for c in classes)
    assert equivalence.stats.timeouts == 0


def test_evaluate_scripted_metrics_and_outputs(tmp_path, equivalence):
    problems = load_benchmark("aime24", limit=2)  # answers 204 and 25
    engine = ScriptedEngine([["\\boxed{204}", "so \\boxed{204}", "\\boxed{7}", "no box"],
                             ["\\boxed{025}", "\\boxed{7}", "\\boxed{7}", "\\boxed{7}"]])
    settings = EvalSettings(n=4, temperature=0.8, top_p=0.95, max_tokens=16, max_prompt_tokens=None)
    report = evaluate(engine, CharTok(), {"aime24": problems}, settings, equivalence=equivalence)
    params = engine.calls[0]
    assert (params.n, params.temperature, params.top_p, params.greedy) == (4, 0.8, 0.95, False)
    m = report["benchmarks"]["aime24"]["scores"]["math"]
    # Problem 1 (204 204 7 -): 2/4 correct, pass@2 = 1 - 1/6, maj@2 = 4/6 (6 pairs: 204+204 1, 204+7 twice 1/2,
    # 204+none twice 1, 7+none 0), maj@4 = 1. Problem 2 (025 7 7 7): 1/4, maj@2 = 3 ties of 1/2 over 6 pairs, maj@4 = 0.
    assert m["avg@4"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["maj@2"] == pytest.approx((4 / 6 + 1 / 4) / 2)
    assert m["maj@4"] == pytest.approx(0.5)
    assert report["benchmarks"]["aime24"]["scores"]["strict"]["avg@4"] <= m["avg@4"]
    assert flat_metrics(report)["eval/aime24/math/avg@4"] == m["avg@4"]
    out = write_report(report, tmp_path / "eval")
    saved = json.loads((out / "results.json").read_text())
    assert saved["benchmarks"]["aime24"]["scores"]["math"]["maj@4"] == pytest.approx(0.5)
    assert "| aime24 | 2 |" in (out / "results.md").read_text() and "37.50" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["correct_math"] for r in rows] == [[True, True, False, False], [True, False, False, False]]


def test_evaluate_greedy_and_overlong(equivalence):
    problems = [Problem(id="short", question="1+1?", answer="2", source="t"),
                Problem(id="long", question="x" * 500, answer="2", source="t")]
    engine = ScriptedEngine([["\\boxed{2}"]])
    settings = EvalSettings(greedy=True, max_prompt_tokens=200, max_tokens=8)
    report = evaluate(engine, CharTok(), {"toy": problems}, settings, equivalence=equivalence)
    entry = report["benchmarks"]["toy"]
    assert engine.calls[0].greedy and engine.calls[0].n == 1
    assert entry["problems"] == 1 and [o["problem_id"] for o in entry["overlong"]] == ["long"]
    assert entry["scores"]["math"] == {"avg@1": 1.0, "pass@1": 1.0, "maj@1": 1.0}


def test_reframe_generation_records_strategies(tmp_path):
    from harmony_mcore.data.cli import generate_reframes, strategy_plan, write_rows

    problems = load_benchmark("amc", limit=3)
    good = "STRATEGY: Reverse\nREWRITTEN PROBLEM: Start from the end...\nSOLUTION: work back.\n\\boxed{142}"

    class Engine:
        def __init__(self):
            self.rounds = 0

        def generate(self, requests, params):
            self.rounds += 1
            if self.rounds == 1:  # the second problem fails once, then succeeds on retry
                texts = [good, "I refuse.", "STRATEGY: POV Shift\nREWRITTEN PROBLEM: As the fraction...\nSOLUTION: x"]
            else:
                assert list(params.request_seeds) == [1]
                texts = [good.replace("Reverse", "Add Noise")]
            return [GenerationResult(list(r), [Sample([], t, [], FINISH_STOP)]) for r, t in zip(requests, texts)]

    rows = generate_reframes(Engine(), CharTok(), problems, strategy_plan("cycle", 3), temperature=0.7, top_p=1.0,
                             max_tokens=64, seed=0, retries=1)
    assert [r["strategy"] for r in rows] == ["Reverse", "Add Noise", "POV Shift"]
    assert [r["requested_strategy"] for r in rows] == ["Concretize", "Generalize", "Domain Shift"]
    assert rows[0]["reframed"] == "Start from the end..." and rows[0]["reframe_answer"] == "142"
    write_rows(rows, tmp_path / "r.jsonl")
    again = load_benchmark("file", tmp_path / "r.jsonl")
    assert [p.reframed for p in again] == [r["reframed"] for r in rows] and again[0].answer == "142"


def test_settings_and_suites_from_run_config(tmp_path):
    from harmony_mcore.config import RunConfig
    from harmony_mcore.evaluation import eval_suites, settings_from_config

    cfg = RunConfig()
    cfg.eval.n, cfg.eval.limit, cfg.rollout.max_response_tokens = 4, 3, 99
    s = settings_from_config(cfg.eval, cfg.rollout, cfg.algorithm.consensus)
    assert (s.n, s.temperature, s.top_p, s.max_tokens, s.limit) == (4, 0.8, 0.95, 99, 3)
    assert s.ks() == [1, 2, 4]
    suites = eval_suites(cfg.eval, cfg.data)
    assert list(suites) == ["math500"] and len(suites["math500"]) == 3
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    cfg.data.benchmark, cfg.data.path = "file", str(own)
    cfg.eval.benchmarks = ["file", "aime24"]
    suites = eval_suites(cfg.eval, cfg.data)
    assert [len(v) for v in suites.values()] == [1, 3] and suites["file"][0].answer == "2"



def test_scoring_agrees_with_qwen_grader_on_real_samples(equivalence):
    """100 MATH problems x 8 real CoT responses with Qwen2.5-Math's own correctness flags: an
    independent grader. The only disagreement (gt "10{,}000", answer "10000") is theirs."""
    from harmony_mcore.evaluation import summarise

    rows = [json.loads(line) for line in REAL.read_text().splitlines()]
    problems = [Problem(id=str(r["idx"]), question=r["question"], answer=r["gt"], source="math") for r in rows]
    answers = [[extract_boxed(t) for t in r["code"]] for r in rows]
    flags = [r["score"] for r in rows]
    scored = score_problems(problems, answers, equivalence)["math"]
    disagree = [(p.answer, a) for p, s, f, ans in zip(problems, scored, flags, answers)
                for j, a in enumerate(ans) if s.correct[j] != f[j]]
    assert disagree == [("10{,}000", "10000")]
    ours = summarise(scored, [8])
    assert ours["avg@8"] == pytest.approx(sum(map(sum, flags)) / 800 + 1 / 800)
    assert ours["pass@8"] == pytest.approx(sum(map(any, flags)) / 100 + 1 / 100)
    assert 0.91 <= ours["maj@8"] <= 0.94  # the file's README reports maj@8 = 0.93 (its own tie rule)
