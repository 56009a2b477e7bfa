"""Torch engine vs a plain transformers forward (no cache, no padding) as the reference."""

import pytest
import torch

from harmony_mcore.rollout.base import FINISH_LENGTH, FINISH_STOP, SamplingParams
from harmony_mcore.rollout.torch_engine import TorchEngine, sample_from, top_p_filter
from tests.support.tiny import char_tokenizer, tiny_hf_config


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    cfg = tiny_hf_config("qwen3", vocab_size=len(tok))
    return TorchEngine.from_hf_config(cfg, tok, device="cpu", max_batch_size=5)


def ref_logprobs(model, seq, temperature):
    """log p(seq[t+1] | seq[:t+1]) from one full forward of the unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].float()
    return torch.log_softmax(logits[:-1] / temperature, -1).gather(-1, torch.tensor(seq[1:]).unsqueeze(-1)).squeeze(-1)


def ref_greedy(model, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def prompts(tok):
    return [tok.encode(t, add_special_tokens=False) for t in ("2+2=", "What is 17*3? Think.", "x", "hello there")]


def test_greedy_matches_uncached_unpadded_reference(engine, tok):
    ps = prompts(tok)
    out = engine.generate(ps, SamplingParams(greedy=True, max_tokens=12, stop_token_ids=[]))
    for p, res in zip(ps, out):
        (s,) = res.samples
        assert res.prompt_ids == p
        assert s.token_ids == ref_greedy(engine.model, p, 12)
        assert s.finish_reason == FINISH_LENGTH
        # greedy log-probs are reported at temperature 1
        torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float32),
                                   ref_logprobs(engine.model, p + s.token_ids, 1.0)[len(p) - 1:], atol=1e-5, rtol=0)


def test_sampled_logprobs_match_reference_at_temperature(engine, tok):
    ps = prompts(tok)
    out = engine.generate(ps, SamplingParams(n=3, temperature=0.7, max_tokens=10, seed=3, stop_token_ids=[]))
    assert [len(r.samples) for r in out] == [3] * len(ps)  # 12 rows over batches of 5: batching across chunks
    for p, res in zip(ps, out):
        for s in res.samples:
            assert len(s.token_ids) == len(s.logprobs) == 10
            ref = ref_logprobs(engine.model, p + s.token_ids, 0.7)[len(p) - 1:]
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float32), ref, atol=1e-5, rtol=0)
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)


def test_seeds_reproducible_and_independent_of_batch(engine, tok):
    ps = prompts(tok)
    sp = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=11, request_seeds=[10, 20, 30, 40], stop_token_ids=[])
    a = engine.generate(ps, sp)
    b = engine.generate(ps, sp)
    assert [[s.token_ids for s in r.samples] for r in a] == [[s.token_ids for s in r.samples] for r in b]
    # the same request with its own seed, alone and at another position, samples the same tokens
    alone = engine.generate([ps[2]], SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=11, request_seeds=[30],
                                                    stop_token_ids=[]))
    assert [s.token_ids for s in alone[0].samples] == [s.token_ids for s in a[2].samples]
    # the n samples of one request differ, and another base seed changes them
    assert a[1].samples[0].token_ids != a[1].samples[1].token_ids
    c = engine.generate(ps, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=12, request_seeds=[10, 20, 30, 40],
                                           stop_token_ids=[]))
    assert [s.token_ids for s in c[1].samples] != [s.token_ids for s in a[1].samples]


def test_stop_token_ends_sample_and_is_kept(engine, tok):
    p = prompts(tok)[1]
    ref = ref_greedy(engine.model, p, 12)
    stop = ref[4]
    first = ref.index(stop)
    (res,) = engine.generate([p], SamplingParams(greedy=True, max_tokens=12, stop_token_ids=[stop]))
    s = res.samples[0]
    assert s.finish_reason == FINISH_STOP
    assert s.token_ids == ref[:first + 1]
    # default stop set = EOS of tokenizer/model config
    assert tok.eos_token_id in engine.eos_token_ids()


def test_eos_in_mixed_batch_keeps_other_rows_running(engine, tok):
    ps = prompts(tok)
    refs = [ref_greedy(engine.model, p, 10) for p in ps]
    stop = refs[0][2]
    out = engine.generate(ps, SamplingParams(greedy=True, max_tokens=10, stop_token_ids=[stop]))
    for ref, res in zip(refs, out):
        s = res.samples[0]
        if stop in ref:
            assert s.finish_reason == FINISH_STOP and s.token_ids == ref[:ref.index(stop) + 1]
        else:
            assert s.finish_reason == FINISH_LENGTH and s.token_ids == ref


def test_tiny_top_p_is_greedy(engine, tok):
    ps = prompts(tok)
    greedy = engine.generate(ps, SamplingParams(greedy=True, max_tokens=6, stop_token_ids=[]))
    nucleus = engine.generate(ps, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=6, seed=0,
                                                 stop_token_ids=[]))
    for g, r in zip(greedy, nucleus):
        assert all(s.token_ids == g.samples[0].token_ids for s in r.samples)


def test_chat_messages_use_the_chat_template(engine, tok):
    msgs = [{"role": "user", "content": "2+3?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    expected = tok.encode(ids, add_special_tokens=False)
    assert engine.prompt_ids(msgs) == expected
    (res,) = engine.generate([msgs], SamplingParams(greedy=True, max_tokens=3, stop_token_ids=[]))
    assert res.prompt_ids == expected


def test_top_p_filter_and_inverse_cdf_sampling():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    kept = top_p_filter(probs, 0.7)  # 0.5 + 0.25 reaches 0.7
    torch.testing.assert_close(kept, torch.tensor([[0.0, 0.5 / 0.75, 0.0, 0.25 / 0.75]]))
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = sample_from(probs.double().expand(len(u), -1), u)
    freq = torch.bincount(draws, minlength=4).double() / len(u)
    torch.testing.assert_close(freq, probs[0].double(), atol=0.015, rtol=0)
    assert not (sample_from(kept.double().expand(len(u), -1), u) % 2 == 0).any()


def test_load_weights_and_errors(tok):
    cfg = tiny_hf_config("llama", vocab_size=len(tok), tie_word_embeddings=True)
    torch.manual_seed(1)
    src = TorchEngine.from_hf_config(cfg, tok, device="cpu")
    dst = TorchEngine.from_hf_config(cfg, tok, device="cpu")
    sd = {k: v for k, v in src.model.state_dict().items() if k != "lm_head.weight"}
    assert dst.load_weights(sd.items()) == len(sd)
    seq = tok.encode("load me", add_special_tokens=False)
    torch.testing.assert_close(dst.score([seq])[0], ref_logprobs(src.model, seq, 1.0), atol=0, rtol=0)
    with pytest.raises(KeyError, match="lm_head.weight must be skipped"):
        dst.load_weights([("lm_head.weight", sd["model.embed_tokens.weight"])])
    with pytest.raises(ValueError, match="has shape"):
        dst.load_weights([("model.norm.weight", torch.ones(3))])


def test_sleep_wake_and_params_validation(engine, tok):
    engine.sleep(level=2)
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.generate([[5, 6]], SamplingParams(greedy=True, max_tokens=2))
    engine.wake_up(tags=["kv_cache"])
    with pytest.raises(RuntimeError, match="asleep"):
        engine.load_weights([])
    engine.wake_up(tags=["weights"])
    engine.reset_prefix_cache()
    assert engine.generate([[5, 6]], SamplingParams(greedy=True, max_tokens=2))[0].samples
    with pytest.raises(ValueError, match="greedy=True"):
        SamplingParams(temperature=0)
    with pytest.raises(ValueError, match="n=1"):
        SamplingParams(greedy=True, n=4)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="request_seeds"):
        engine.generate([[5]], SamplingParams(request_seeds=[1, 2], max_tokens=1))


def test_from_pretrained_directory(tmp_path, engine, tok):
    engine.model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = TorchEngine.from_pretrained(str(tmp_path), device="cpu")
    seq = tok.encode("same weights?", add_special_tokens=False)
    torch.testing.assert_close(loaded.score([seq])[0], ref_logprobs(engine.model, seq, 1.0), atol=1e-6, rtol=0)
    assert loaded.prompt_ids([{"role": "user", "content": "hi"}]) == engine.prompt_ids([{"role": "user", "content": "hi"}])
