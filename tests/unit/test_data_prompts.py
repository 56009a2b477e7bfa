import pytest

from harmony_mcore.data.benchmarks import DataError, Problem, load_benchmark
from harmony_mcore.data.prompts import (MARKERS, SOLVER_SYSTEM, SOLVER_SYSTEM_CHOICE, STRATEGIES, build_prompts,
                                        encode, parse_reframing, reframer_system, render, view_messages)


class CharTokenizer:
    """One id per character; optionally a chat template (rendered by a tiny stand-in)."""

    def __init__(self, chat_template=None):
        self.chat_template = chat_template

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([0] if add_special_tokens else []) + [ord(c) for c in text]}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


MATH = Problem(id="m1", question="What is $1+1$?", answer="2", source="t")
MC = Problem(id="c1", question="Pick the even one.", answer="B", source="t", choices=("3", "4", "5"))


def test_solver_and_reframe_views():
    solver, reframe = view_messages(MATH, "reframe", 2)
    assert solver == [{"role": "system", "content": SOLVER_SYSTEM}, {"role": "user", "content": MATH.question}]
    assert reframe[1] == solver[1]  # same user turn, only the system prompt differs
    system = reframe[0]["content"]
    assert "Reframer" in system and "\\boxed{}" in system and "Pick the strategy" in system
    for name in STRATEGIES:
        assert f"- {name}:" in system
    positions = [system.index(m + " <") for m in MARKERS]
    assert positions == sorted(positions)  # markers requested in order


def test_reference_prompt_set_errors_name_the_fix():
    from harmony_mcore.config import DataConfig

    with pytest.raises(DataError, match="multiple choice.*data.prompts=harmony"):
        view_messages(MC, "reframe", 2, "reference")
    with pytest.raises(DataError, match="data.num_views=2"):
        view_messages(MATH, "reframe", 3, "reference")
    with pytest.raises(DataError, match="use one of harmony, reference"):
        view_messages(MATH, "reframe", 2, "paper")
    with pytest.raises(ValueError, match="data.num_views=2"):
        DataConfig(prompts="reference", num_views=3).validate()
    with pytest.raises(ValueError, match="data.prompts='paper': use harmony or reference"):
        DataConfig(prompts="paper").validate()
    # static reframes with the reference's solver prompt on the reframed question
    static = Problem(id="s", question="q", answer="1", source="t", reframed="q'")
    assert view_messages(static, "static", 2, "reference")[1][1]["content"] == "q'"


def test_k_views_are_nudged_to_distinct_strategies():
    views = view_messages(MATH, "reframe", 5)
    assert len(views) == 5
    nudges = [next(n for n in STRATEGIES if f"Use the strategy {n}." in v[0]["content"]) for v in views[1:]]
    assert nudges == list(STRATEGIES)[:4]
    with pytest.raises(DataError, match="unknown reframing strategy"):
        reframer_system("Rhyme")


def test_static_reframe_view_uses_solver_prompt_on_reframing():
    p = load_benchmark("math-train-reframed", limit=1)[0]
    solver, static = view_messages(p, "static", 2)
    assert static[0] == solver[0] and static[1]["content"] == p.reframed
    with pytest.raises(DataError, match="no static reframing"):
        view_messages(MATH, "static", 2)
    with pytest.raises(DataError, match="num_views=2"):
        view_messages(p, "static", 3)


def test_multiple_choice_variants_box_the_letter():
    solver, reframe = view_messages(MC, "reframe", 2)
    assert solver[0]["content"] == SOLVER_SYSTEM_CHOICE
    assert solver[1]["content"] == "Pick the even one.\nA. 3\nB. 4\nC. 5"
    assert "letter" in reframe[0]["content"] and reframe[1] == solver[1]


def test_render_with_and_without_chat_template():
    msgs = view_messages(MATH, "solver-only", 1)[0]
    plain = render(CharTokenizer(), msgs)
    assert plain == f"System: {SOLVER_SYSTEM}\n\nUser: {MATH.question}\n\nAssistant:"
    assert encode(CharTokenizer(), msgs)[0] == 0  # BOS added for the plain template
    templated = CharTokenizer(chat_template="x")
    assert render(templated, msgs).endswith("<assistant>")
    assert encode(templated, msgs) == [ord(c) for c in render(templated, msgs)]  # template owns specials


def test_overlong_prompts_are_reported_not_silently_dropped():
    problems = [Problem(id=f"p{i}", question="x" * (10 + 400 * (i % 3 == 0)), answer="1", source="t")
                for i in range(7)]
    tok = CharTokenizer()
    solver_len = len(encode(tok, view_messages(problems[1], "solver-only", 1)[0]))
    ps = build_prompts(problems, tok, "solver-only", num_views=2, max_tokens=solver_len + 5)
    assert [p.id for p in ps.problems] == ["p1", "p2", "p4", "p5"]
    assert sorted({o.problem_id for o in ps.overlong}) == ["p0", "p3", "p6"]
    assert len(ps.overlong) == 6 and all(o.tokens > solver_len + 5 for o in ps.overlong)  # both views listed
    assert "3 problems excluded" in ps.report() and "p3" in ps.report()
    assert len(ps.token_ids) == 2 and all(len(v) == 4 for v in ps.token_ids)
    # The reframe view is longer than the solver view: a limit between them excludes every problem.
    ps2 = build_prompts(problems[1:2], tok, "reframe", 2, max_tokens=solver_len + 5)
    assert ps2.problems == [] and [o.view for o in ps2.overlong] == [1]


def test_parse_reframing():
    text = ("STRATEGY: **Domain Shift**\nREWRITTEN PROBLEM: A robot has 2 coins...\n"
            "SOLUTION: It has 1+1 = 2.\n\\boxed{2}")
    r = parse_reframing(text)
    assert r.strategy == "Domain Shift" and r.rewritten == "A robot has 2 coins..."
    assert r.solution.startswith("It has") and r.solution.endswith("\\boxed{2}")
    assert parse_reframing("STRATEGY: dance\nSOLUTION: 3").strategy is None
    missing = parse_reframing("REWRITTEN PROBLEM:\nSOLUTION: 4")
    assert missing.strategy is None and missing.rewritten is None and missing.solution == "4"


def test_data_cli_list_and_show(capsys):
    from harmony_mcore.cli import main

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "math500 " in out and " 1319 " in out and "mmlu-pro" in out
    assert main(["data", "show", "amc", "--n", "1", "--view", "reframe"]) == 0
    out = capsys.readouterr().out
    assert "answer: 142" in out and "Reframer" in out
    assert main(["data", "show", "gpqa-diamond"]) == 2
    assert "SOURCES.md" in capsys.readouterr().err
