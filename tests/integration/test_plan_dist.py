"""`harmony plan`'s parameter and in-flight micro-batch counts against real Megatron models under gloo."""

import json
from pathlib import Path

import pytest

from harmony_mcore import plan
from harmony_mcore.models import families


@pytest.mark.dist
def test_params_and_inflight_microbatches_equal_megatron(run_torchrun, tmp_path):
    """One 4-process launch builds every family under TP2xPP2, TP2(xDP2), PP2(xDP2) and PP2xVPP2, and
    runs Megatron's 1F1B and interleaved schedules counting the micro-batches each rank holds."""
    out = tmp_path / "params.json"
    run_torchrun(Path(__file__).parent / "dist" / "plan_params.py", 4, "2x2x0,2x1x0,1x2x0,1x2x2", str(out))
    result = json.loads(out.read_text())
    assert len(result["ranks"]) == 16
    for row in result["ranks"]:
        for name, hf in result["families"].items():
            expected = plan.params_per_rank(families.shape(hf), row["tp"], row["pp"])[row["pp_rank"]]
            assert row[name] == expected * 4, (name, row)  # fp32 on CPU
        vpp = row["vpp"] or None
        for micro, held in row.get("inflight", {}).items():  # chunk-micro-batches; the plan counts stages' worth
            assert held == plan.inflight_microbatches(row["pp_rank"], row["pp"], vpp, int(micro)) * (vpp or 1), row
    assert sum("inflight" in row for row in result["ranks"]) == 12
