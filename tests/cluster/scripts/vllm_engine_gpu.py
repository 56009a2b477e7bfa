"""GPU check of the colocated vLLM engine against the torch engine (run by tests/cluster/test_rollout_vllm_gpu.py).

torchrun --nproc_per_node 1 tests/cluster/scripts/vllm_engine_gpu.py OUT_DIR
"""

import sys

import torch
import torch.distributed as dist

from harmony_mcore.config import RolloutConfig
from harmony_mcore.rollout.base import SamplingParams
from harmony_mcore.rollout.torch_engine import TorchEngine
from harmony_mcore.rollout.vllm_engine import VllmEngine
from tests.support.tiny import char_tokenizer, tiny_hf_config


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def main(out_dir: str) -> None:
    dist.init_process_group("nccl")
    torch.cuda.set_device(0)
    tok = char_tokenizer()
    cfg = tiny_hf_config("qwen3", vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=64, num_hidden_layers=2)
    torch.manual_seed(0)
    ref = TorchEngine.from_hf_config(cfg, tok, dtype=torch.bfloat16, device="cuda")
    ref.model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    engine = VllmEngine(RolloutConfig(tp=1, gpu_memory_utilization=0.3, enforce_eager=True, sleep_level=2),
                        out_dir, dtype="bf16", seed=0, max_model_len=256)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("1+1=", "The answer is", "abc")]

    def sync(state):
        engine.sleep()
        engine.wake_up(["weights"])
        engine.load_weights((k, v) for k, v in state.items())
        engine.wake_up(["kv_cache"])
        engine.reset_prefix_cache()

    for round_ in range(2):
        if round_ == 1:  # new weights must be used (no stale weights or stale prefix cache)
            with torch.no_grad():
                for p in ref.model.parameters():
                    p.mul_(1.5)
        sync(ref.model.state_dict())
        seqs = [p + r.samples[0].token_ids for p, r in
                zip(prompts, ref.generate(prompts, SamplingParams(greedy=True, max_tokens=16, stop_token_ids=[])))]
        d = max_diff(engine.score(seqs), ref.score(seqs))
        # sampled-token log-probs follow the convention: log_softmax(logits / T) at the sampling temperature
        out = engine.generate(prompts, SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=1, stop_token_ids=[]))
        samp = [p + s.token_ids for p, r in zip(prompts, out) for s in r.samples]
        d_gen = max_diff([torch.tensor(s.logprobs) for r in out for s in r.samples],
                         [x[len(p) - 1:] for x, p in zip(ref.score(samp, 0.7), [p for p in prompts for _ in range(2)])])
        print(f"round {round_}: score max diff {d:.4f}, sampled log-prob max diff {d_gen:.4f}", flush=True)
        assert d < 0.1 and d_gen < 0.1, "vLLM and torch engine disagree (bf16 tolerance 0.1)"
    print("VLLM ENGINE OK")


if __name__ == "__main__":
    main(sys.argv[1])
