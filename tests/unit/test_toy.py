"""The CPU default's toy task and the trainer's data schedule (pure functions, no processes)."""

import re

import pytest

from harmony_mcore import toy
from harmony_mcore.answers import extract_boxed
from harmony_mcore.config import load_config
from harmony_mcore.rewards import format_score
from harmony_mcore.trainer import batch_indices, total_steps


def test_problems_answers_and_forms():
    problems = toy.make_problems(200, seed=5)
    assert problems == toy.make_problems(200, seed=5) and problems != toy.make_problems(200, seed=6)
    assert {p.form for p in problems} == set(range(len(toy.SURFACE_FORMS)))
    for p in problems:
        q = p.question
        if "bags" in q:
            b, c, a = (int(x) for x in re.findall(r"\d", q))
            assert int(p.answer) == b * c + a
        elif q.startswith("add"):
            a, b, c = (int(x) for x in re.findall(r"\d", q))
            assert int(p.answer) == a + b * c
        else:
            assert int(p.answer) == eval(q)


def test_tokenizer_round_trip_keeps_answers_and_markers():
    tok = toy.build_tokenizer()
    for p in toy.make_problems(50, seed=1):
        for strategy in toy.REFRAMES:
            for text in (toy.solver_response(p), toy.reframe_response(p, strategy)):
                ids = tok.encode(text, add_special_tokens=False)
                assert tok.unk_token_id not in ids
                back = tok.decode(ids)
                assert extract_boxed(back) == p.answer
        reframed = tok.decode(tok.encode(toy.reframe_response(p, "reverse"), add_special_tokens=False))
        assert format_score(reframed) == 1.0  # the consensus teammate's marker check sees all three
        for prompt in (toy.solver_prompt(p), toy.reframe_prompt(p)):
            assert tok.unk_token_id not in tok.encode(prompt, add_special_tokens=False)
    assert len(tok) <= load_config("cpu").model.hf_config["vocab_size"]


def test_pretrained_model_is_built_once(tmp_path, monkeypatch):
    hf = load_config("cpu").model.hf_config
    kw = dict(steps=2, lr=1e-3, batch=4, seed=0, cache_dir=str(tmp_path))
    first = toy.pretrained_model_dir(hf, **kw)
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    monkeypatch.setattr(toy, "pretrain", lambda *a, **k: pytest.fail("rebuilt a cached model"))
    assert toy.pretrained_model_dir(hf, **kw) == first


def test_batches_cover_each_epoch_once_and_are_reproducible():
    cfg = load_config("cpu", ["toy.num_problems=10", "data.problems_per_step=3", "steps=null", "data.epochs=4"])
    assert total_steps(cfg, 10) == 4 * 3  # 10 // 3 steps per epoch, a partial batch dropped
    epochs = [[i for s in range(e * 3, e * 3 + 3) for i in batch_indices(cfg, 10, s)] for e in range(4)]
    for e in epochs:
        assert len(e) == len(set(e)) == 9
    assert epochs[0] != epochs[1]
    assert [batch_indices(cfg, 10, s) for s in range(12)] == [batch_indices(cfg, 10, s) for s in range(12)]
