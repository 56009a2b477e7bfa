"""Policy log-probs, entropy and one GRPO step under TP/PP/VPP/DP vs single-process plain-torch HF references.

Each launch checks Qwen2, Qwen3 and Llama tiny configs (tests/policy/check_policy.py): log-probs and
entropy against per-row transformers forwards (1e-5), reference == policy after sync, one 3-view GRPO
step's loss, grad norm and every updated weight shard against the same step in plain torch on the
HF model (1e-5), and a skipped step on a non-finite gradient.
"""

from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "policy" / "check_policy.py"


@pytest.mark.dist
@pytest.mark.parametrize("nproc, tp, pp, vpp", [(4, 2, 2, 1), (2, 2, 1, 1), (2, 1, 2, 2), (2, 1, 1, 1)],
                         ids=["tp2xpp2", "tp2", "pp2-vpp2", "dp2"])
def test_policy_matches_transformers(run_torchrun, nproc, tp, pp, vpp):
    proc = run_torchrun(SCRIPT, nproc, str(tp), str(pp), str(vpp), timeout=400)
    dp = nproc // (tp * pp)
    assert f"POLICY OK tp={tp} pp={pp} vpp={vpp if vpp > 1 else None} dp={dp}" in proc.stdout
    assert proc.stdout.count("weight err") == 3
