"""Policy log-probs, entropy and one GRPO step under TP/PP/VPP/DP vs single-process plain-torch HF references.

One 4-process launch runs four layouts in turn (tests/policy/check_policy.py): TP2xPP2, TP2xDP2,
PP2(VPP2)xDP2 and DP4. Each layout checks Qwen2, Qwen3 and Llama tiny configs: log-probs and entropy
against per-row transformers forwards (1e-5), reference == policy after sync, two 3-view GRPO steps (loss,
grad norm, scheduled lr, then every updated weight shard) against the same steps in plain torch on the HF model
(1e-5), and a skipped step on a non-finite gradient.
"""

from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "policy" / "check_policy.py"


@pytest.mark.dist
def test_policy_matches_transformers_across_layouts(run_torchrun):
    proc = run_torchrun(SCRIPT, 4, "2x2", "2x1", "1x2v2", "1x1", timeout=500)
    for header in ("tp=2 pp=2 vpp=None dp=1", "tp=2 pp=1 vpp=None dp=2",
                   "tp=1 pp=2 vpp=2 dp=2", "tp=1 pp=1 vpp=None dp=4"):
        assert f"POLICY OK {header}" in proc.stdout, proc.stdout
    assert proc.stdout.count("weight err") == 12
