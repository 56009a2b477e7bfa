"""`harmony plan`: exact parameter bytes against real Megatron models, the documented worked
example, independent references for the formulas, and every preset."""

import functools
import json
import math
import re
from pathlib import Path

import pytest
import torch

from harmony_mcore import plan, plan_cli
from harmony_mcore.models import families
from harmony_mcore.config import ConfigError, load_config, presets

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.dist
def test_params_and_inflight_microbatches_equal_megatron(run_torchrun, tmp_path):
    """One 4-process launch builds every family under TP2xPP2, TP2(xDP2), PP2(xDP2) and PP2xVPP2, and
    runs Megatron's 1F1B and interleaved schedules counting the micro-batches each rank holds."""
    out = tmp_path / "params.json"
    run_torchrun(REPO / "tests/dist/plan_params.py", 4, "2x2x0,2x1x0,1x2x0,1x2x2", str(out))
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


def _hf_param_count(hf: dict) -> int:
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[hf["model_type"]](**{k: v for k, v in hf.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # shared (tied) weights are counted once


@functools.lru_cache(maxsize=None)
def _preset(name: str):
    return load_config(name)  # read-only below; composing with Hydra costs ~0.5 s each


def _preset_models() -> dict[str, dict]:
    models = {}
    for name in presets():
        hf = _preset(name).model.hf_config
        models[hf.get("_name_or_path") or f"{hf['architectures'][0]}-{hf['hidden_size']}-{hf['num_hidden_layers']}"] = hf
    return models


def test_total_params_equal_transformers_models():
    """The unpadded count (what the rollout engine holds) equals the HF model's, for every preset's
    model, built on the meta device."""
    models = _preset_models()
    assert len(models) >= 5
    for key, hf in models.items():
        assert plan.total_params(families.shape(hf)) == _hf_param_count(hf), key


def test_kv_bytes_per_token_equal_the_transformers_cache():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "vocab_size": 100}
    model = Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in hf.items() if k != "architectures"})).eval()
    s = 7
    with torch.no_grad():
        cache = model(torch.randint(0, 100, (1, s)), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    pairs = [(lay.keys, lay.values) for lay in layers] if layers is not None else zip(cache.key_cache, cache.value_cache)
    cached = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pairs)
    assert cached == plan.kv_bytes_per_token(families.shape(hf), rollout_tp=1, dtype_bytes=4) * s


@pytest.mark.parametrize("pp, vpp", [(2, 2), (4, 2), (4, 3), (8, 4)])
def test_interleaved_inflight_matches_korthikanti_closed_form(pp, vpp):
    # Stage 0 holds L * (1 + (p-1)/(p*v)) layers' worth of one micro-batch: in units of its L/p layers, that over p.
    closed = pp * (1 + (pp - 1) / (pp * vpp))
    assert plan.inflight_microbatches(0, pp, vpp, microbatches=1000) == pytest.approx(closed)
    assert plan.inflight_microbatches(0, pp, None, microbatches=1000) == pp
    assert plan.inflight_microbatches(pp - 1, pp, None, microbatches=1000) == 1
    assert plan.inflight_microbatches(0, pp, None, microbatches=1) == 1


def test_activation_formula_reduces_to_korthikanti_for_gpt():
    """With g = a, f = 4h and a GeLU MLP (2f instead of SwiGLU's 6f) plus Korthikanti's two dropout
    masks (sbh) the per-layer bytes are their 34*s*b*h (+ 5*a*s^2*b unfused)."""
    h, a, s, b = 1024, 16, 512, 2
    gpt = plan.ModelShape("GPT", 1, h, a, a, h // a, 4 * h, 1000, False, False, False)
    swiglu_extra = 4 * gpt.ffn * s * b  # SwiGLU keeps gate+up (4f) and its output (2f); GeLU keeps 2f + 2f
    dropout_masks = 2 * s * b * h
    ours = plan.layer_activation_bytes(gpt, s, b, tp=1, sp=False, recompute="none", flash=True)
    assert ours - swiglu_extra + 2 * gpt.ffn * s * b + dropout_masks == 34 * s * b * h
    unfused = plan.layer_activation_bytes(gpt, s, b, tp=1, sp=False, recompute="none", flash=False)
    assert unfused - ours == 2 * a * s * s * b  # their 5as^2b less the mask (as^2b) and dropout output (2as^2b)
    assert plan.layer_activation_bytes(gpt, s, b, 4, True, "full") == 2 * s * b * h // 4


def _worked_example() -> dict[str, str]:
    text = (REPO / "docs/ops.md").read_text()
    table = text.split("<!-- worked-example -->")[1].split("<!-- /worked-example -->")[0]
    return dict(re.findall(r"^\| `(\w+)` \| (\S+) \|$", table, re.M))


def test_worked_example_in_docs():
    doc = _worked_example()
    assert len(doc) == 17
    cfg = load_config("qwen3-8b-math500", [
        "parallel.tp=2", "parallel.pp=1", "parallel.vpp=null", "parallel.dp=null", "parallel.sequence_parallel=false",
        "parallel.micro_batch_size=1", "parallel.distributed_optimizer=true", "parallel.offload_reference=true",
        "model.recompute=none", "model.dtype=bf16", "rollout.engine=vllm", "rollout.tp=2", "rollout.n=16",
        "rollout.max_prompt_tokens=1024", "rollout.max_response_tokens=3072", "rollout.gpu_memory_utilization=0.35",
        "data.problems_per_step=128", "data.num_views=2", "data.views=reframe", "algorithm.kl_coef=0.005"])
    p, source, suggestion = plan.plan_run(cfg, gpus=8)
    st, r = p["stages"][0], p["rollout"]
    ours = {"params_per_rank": st["params"], "concurrent_sequences": r["concurrent_sequences"], "waves": r["waves"],
            "decode_steps": r["decode_steps"],
            "kv_bytes_per_token": r["kv_bytes_per_token"], "kv_pool": r["kv_pool"],
            "forward_flops_per_sequence": plan.forward_flops(families.shape(cfg.model.hf_config), 4096),
            "fits": str(p["fits"]).lower()}
    ours |= {k: st[k] for k in doc if k in st}
    assert {k: str(v) for k, v in ours.items()} == doc
    assert source == "model.hf_config" and suggestion is None and len(p["stages"]) == 1


# Presets whose `fits` note this plan disagrees with (configs/ is the trainer's), each with the
# overrides that make it fit per the plan: a micro-batch of 4 x 4096 tokens without recomputation
# overflows the train phase, and a 0.6 vLLM share next to the trainer's state the generate phase.
def _fits_note_holds(cfg) -> None:
    p, _, suggestion = plan.plan_run(cfg)
    assert p["peak"] > 0 and p["flops"]["total"] > 0 and math.isfinite(p["time_floor_s"]["total"])
    if cfg.fits:
        gpus, _ = plan.parse_fits(cfg.fits)
        assert p["layout"]["gpus"] == gpus
        assert p["fits"], f"{cfg.name}: {p['problems']}; suggested {suggestion}"


@pytest.mark.parametrize("name", presets())
def test_every_preset_fits_where_it_says(name):
    _fits_note_holds(_preset(name))


def test_suggestion_is_the_smallest_layout_that_fits():
    cfg = load_config("qwen3-8b-math500", ["parallel.micro_batch_size=8", "rollout.gpu_memory_utilization=0.6"])
    p, _, suggestion = plan.plan_run(cfg)
    assert not p["fits"] and p["problems"]
    lay, fraction = suggestion
    m, w = families.shape(cfg.model.hf_config), plan.Workload.from_config(cfg)
    w2 = plan.Workload(**{**w.__dict__, "memory_fraction": fraction})
    assert plan.plan(m, lay, w2)["fits"] and lay.gpus == 8
    base, check = plan.layout_from_config(cfg, 8), plan.preflight_check(cfg, cfg.model.hf_config)
    smaller = []
    for c in plan.candidate_layouts(base):
        try:
            check(c)
        except ConfigError:
            continue
        if c.tp * c.pp < lay.tp * lay.pp:
            smaller.append(c)
    assert smaller
    for c in smaller:  # at no vLLM share from 0.05 up to the configured one
        for k in range(1, 13):
            assert not plan.plan(m, c, plan.Workload(**{**w.__dict__, "memory_fraction": 0.05 * k}))["fits"], c


def test_generate_phase_names_the_memory_fraction_fix():
    cfg = load_config("qwen3-8b-math500", ["parallel.micro_batch_size=1", "rollout.gpu_memory_utilization=0.9"])
    p, _, _ = plan.plan_run(cfg)
    assert p["binding_phase"] == "generate"
    assert any("rollout.gpu_memory_utilization<=" in msg for msg in p["problems"])
    fix = float(re.search(r"gpu_memory_utilization<=([\d.]+)", " ".join(p["problems"]))[1])
    fixed, _, _ = plan.plan_run(load_config("qwen3-8b-math500", [
        "parallel.micro_batch_size=1", f"rollout.gpu_memory_utilization={fix}"]))
    assert fixed["fits"]


def test_shape_from_a_local_config_json(tmp_path):
    hf = dict(_preset("qwen3-4b-math500").model.hf_config)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    cfg = load_config("qwen3-4b-math500", ["model.hf_config=null", f"model.path={tmp_path}"])
    p, source, _ = plan.plan_run(cfg)
    assert source == str(tmp_path / "config.json") and p["params_total"] == _hf_param_count(hf)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ConfigError, match="NODESxGPUS_PER_NODExHARDWARE"):
        plan.parse_fits("8xA100")
    with pytest.raises(ConfigError, match="not a multiple of parallel.tp"):
        plan.plan_run(load_config("qwen3-8b-math500", ["parallel.tp=3"]), 8)
    with pytest.raises(ConfigError, match="are not divisible by parallel.tp=3"):
        plan.plan_run(load_config("qwen3-8b-math500", ["parallel.tp=3"]), 12)
    with pytest.raises(ConfigError, match="36 layers are not divisible by parallel.pp=5"):
        plan.plan_run(load_config("qwen3-8b-math500", ["parallel.pp=5", "parallel.tp=1"]), gpus=10)
    with pytest.raises(ConfigError, match="without downloading"):
        plan.plan_run(load_config("qwen3-8b-math500", ["model.hf_config=null", "model.path=/nonexistent/model"]))
    with pytest.raises(ConfigError, match="supported are"):
        families.shape({"architectures": ["MistralForCausalLM"]})
    hf = dict(_preset("qwen3-4b-math500").model.hf_config)
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers"):
        with pytest.raises(ConfigError, match=f"{key}=0; it must be a positive integer"):
            families.shape({**hf, key: 0})


def test_cli_json_and_errors(capsys):
    assert plan_cli.main(["qwen3-32b-math500-8node", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["layout"]["gpus"] == 64 and p["model"]["arch"] == "Qwen3ForCausalLM" and len(p["stages"]) == 2
    assert plan_cli.main(["qwen3-8b-math500", "parallel.micro_batch_size=8"]) == 0  # the rich table
    out = capsys.readouterr().out
    assert "peak: train" in out and "smallest layout that fits" in out
    assert plan_cli.main(["qwen3-8b-math500", "parallel.tp=3"]) == 2
    assert "not a multiple of parallel.tp" in capsys.readouterr().err


def test_gpu_policy_check_prints_the_plan_for_its_own_setup():
    """benchmarks/gpu_policy_check.py reports the plan next to max_memory_allocated; its estimate is
    20 bytes per parameter (bf16 weights, fp32 grads, 12 of Adam, bf16 reference) plus 28 layers of
    activations and the logits, with the parameter count taken from transformers."""
    import importlib.util

    from harmony_mcore.config import ParallelConfig

    spec = importlib.util.spec_from_file_location("gpu_policy_check", REPO / "benchmarks/gpu_policy_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    hf = bench.QWEN3_1P7B
    assert hf["vocab_size"] % 128 == 0 and hf["tie_word_embeddings"]  # no padding, one embedding copy
    m = families.shape(hf)
    act = plan.layer_activation_bytes(m, bench.SEQ, 1, tp=1, sp=False, recompute="selective", flash=False)
    expected = 20 * _hf_param_count(hf) + 28 * act + bench.SEQ * hf["vocab_size"] * 6
    par = ParallelConfig(tp=1, pp=1, micro_batch_size=1, distributed_optimizer=True)
    assert bench.plan_estimate_gib(par, "selective") == pytest.approx(expected / 2**30, rel=1e-12)


def test_mean_seq_len_changes_time_not_memory():
    cfg = load_config("qwen3-8b-math500", ["parallel.micro_batch_size=1", "rollout.gpu_memory_utilization=0.3"])
    full, _, _ = plan.plan_run(cfg)
    short, _, _ = plan.plan_run(cfg, mean_seq_len=1024)
    assert short["peak"] == full["peak"] and short["stages"] == full["stages"]
    m = families.shape(cfg.model.hf_config)
    assert short["flops"]["train"] == 3 * 4096 * plan.forward_flops(m, 1024)
    assert short["rollout"]["decode_steps"] < full["rollout"]["decode_steps"] / 3
    assert short["time_floor_s"]["total"] < full["time_floor_s"]["total"] / 3


def test_without_transformer_engine_attention_scores_count():
    cfg = load_config("qwen3-1.7b-math500", ["parallel.micro_batch_size=1"])
    te, _, _ = plan.plan_run(cfg)
    no_te, _, suggestion = plan.plan_run(cfg, a=plan.Assumptions(transformer_engine=False))
    m = families.shape(cfg.model.hf_config)
    extra = 2 * m.heads * 4096 * 4096 * m.layers  # 2*a*s^2 bytes per layer, micro-batch 1, TP1
    assert no_te["stages"][0]["activations"] - te["stages"][0]["activations"] == extra
    assert suggestion is None or not suggestion[0].sequence_parallel
