"""Policy log-probs, entropy and GRPO steps under TP/PP/VPP/DP vs single-process references.

One 4-process launch runs the layouts in turn (tests/integration/policy/check_policy.py), all with Megatron's distributed
optimizer. fp32: TP2xPP2, TP2xDP2, PP2(VPP2)xDP2 and DP4, each for Qwen2, Qwen3 and Llama tiny configs:
log-probs and entropy against per-row transformers forwards (1e-5), reference == policy after sync, two 3-view
GRPO steps (loss, grad norm, scheduled lr, then every updated weight shard) against the same steps in plain torch
on the HF model (1e-5), and a skipped step on a non-finite gradient. bf16 (fp32 main params): DP4 against plain
torch fp32, then TP2xPP2 and PP2(VPP2)xDP2 against DP4 (tolerances in check_policy.py). fp16: DP4 against plain
torch fp32 (the dynamic loss scale is applied: without it the grad norm is 2^16 times too small).
"""

from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "policy" / "check_policy.py"


@pytest.mark.dist
def test_policy_matches_transformers_across_layouts(run_torchrun):
    proc = run_torchrun(SCRIPT, 4, "2x2", "2x1", "1x2v2", "1x1", "1x1:bf16", "2x2:bf16", "1x2v2:bf16", "1x1:fp16",
                        timeout=900)
    for header in ("tp=2 pp=2 vpp=None dp=1 fp32", "tp=2 pp=1 vpp=None dp=2 fp32", "tp=1 pp=2 vpp=2 dp=2 fp32",
                   "tp=1 pp=1 vpp=None dp=4 fp32", "tp=1 pp=1 vpp=None dp=4 bf16", "tp=2 pp=2 vpp=None dp=1 bf16",
                   "tp=1 pp=2 vpp=2 dp=2 bf16", "tp=1 pp=1 vpp=None dp=4 fp16"):
        assert f"POLICY OK {header}" in proc.stdout, proc.stdout
    assert proc.stdout.count("weight err") == 12
