"""Config composition: every file in configs/ composes over the typed schema and validates."""

import dataclasses
from pathlib import Path

import pytest

from harmony_mcore.config import CONFIG_DIR, ConfigError, RunConfig, load_config, presets, to_yaml

GROUPS = ("model", "data", "algorithm", "parallel", "rollout")


def test_every_preset_composes_and_validates():
    names = presets()
    assert {"cpu", "reference", "qwen3-4b-math500", "qwen3-8b-math500-2node", "qwen3-8b-math500-4node",
            "qwen3-32b-math500-8node", "llama3.2-3b-math500", "llama3.1-8b-math500", "qwen3-1.7b-math500"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, RunConfig) and cfg.name == name
        if name != "cpu":
            assert cfg.model.hf_config and cfg.model.path and cfg.fits, name


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_file_composes(group):
    files = sorted((CONFIG_DIR / group).glob("*.yaml"))
    assert files
    for f in files:
        cfg = load_config("qwen3-4b-math500", [f"{group}={f.stem}"])
        if group == "data":
            assert cfg.data.benchmark == f.stem
        if group == "model":
            assert cfg.model.hf_config["num_hidden_layers"] >= 1


def test_paper_hyperparameters_in_presets():
    cfg = load_config("qwen3-4b-math500")
    a, r = cfg.algorithm, cfg.rollout
    assert (a.lr, a.kl_coef, a.clip_low, a.clip_high, a.dual_clip, a.grad_clip) == (3e-6, 0.005, 0.2, 0.2, 3.0, 1.0)
    assert (r.n, r.temperature, r.top_p, r.max_prompt_tokens, r.max_response_tokens) == (16, 1.0, 1.0, 1024, 3072)
    assert (cfg.data.problems_per_step, cfg.data.epochs) == (128, 100)
    assert (a.consensus.strategy, a.consensus.warmup_steps) == ("harmonic-mean", 20)


def test_layouts_for_8b():
    two, four = load_config("qwen3-8b-math500-2node"), load_config("qwen3-8b-math500-4node")
    assert two.fits.startswith("2x") and four.fits.startswith("4x")
    assert (four.parallel.tp, four.parallel.pp) == (2, 2)


def test_reference_preset_resolves_to_the_reference_protocol(capsys):
    """`harmony train reference --print-config`, read back: every item of the reference's protocol
    (docs/algorithm.md), and its prompts are the shipped data file's, verbatim."""
    import json

    import yaml

    from harmony_mcore.data.benchmarks import FILES, Problem
    from harmony_mcore.data.prompts import view_messages
    from harmony_mcore.train_cli import main

    assert main(["reference", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    a, c = cfg["algorithm"], cfg["algorithm"]["consensus"]
    assert (c["strategy"], c["warmup_strategy"], c["warmup_steps"]) == ("harmonic-mean", "harmonic-mean", 20)
    assert (c["match"], c["reward_match"]) == ("exact", "moderate")  # exact votes, "moderate" rewards
    assert (a["format_penalty"], a["sharpness_coef"], a["soft_reframe_reward"], a["reframe_reward"]) == (0, 0, False, True)
    assert (a["lr"], a["warmup_ratio"], a["lr_warmup_init"]) == (3e-6, 0.1, 0.0)  # first update at lr 0
    assert (a["kl_coef"], a["clip_low"], a["clip_high"], a["dual_clip"]) == (0.005, 0.2, 0.2, 3.0)
    assert cfg["eval"]["every"] == 10 and cfg["eval"]["greedy"] is True
    assert cfg["data"]["prompts"] == "reference" and cfg["data"]["num_views"] == 2
    assert (cfg["data"]["problems_per_step"], cfg["data"]["epochs"], cfg["data"]["seed"]) == (128, 100, 1)
    r = cfg["rollout"]
    assert (r["n"], r["temperature"], r["top_p"], r["max_prompt_tokens"], r["max_response_tokens"]) == (
        16, 1.0, 1.0, 1024, 3072)

    shipped = json.loads((FILES / "reference_prompts.json").read_text(encoding="utf-8"))
    problem = Problem("1", "What is 1+1?", "2", "math500")
    solver, reframe = view_messages(problem, "reframe", 2, cfg["data"]["prompts"])
    assert solver == [{"role": "system", "content": shipped["solver_system"]},
                      {"role": "user", "content": "What is 1+1?"}]
    assert reframe == [{"role": "system", "content": shipped["reframer_system"]},
                       {"role": "user", "content": "What is 1+1?"}]
    # the paper presets keep our own prompts
    ours = view_messages(problem, "reframe", 2, load_config("qwen3-4b-math500").data.prompts)
    assert ours[0][0]["content"] != shipped["solver_system"] and ours[1][0]["content"] != shipped["reframer_system"]


def test_paper_presets_validate_every_10_steps_without_the_format_penalty():
    for name in presets():
        if "math500" in name:
            cfg = load_config(name)
            assert cfg.eval.every == 10 and cfg.algorithm.format_penalty == 0, name


def test_baseline_switch_sets_solver_only_views():
    cfg = load_config("cpu", ["algorithm=ttrl"])
    assert cfg.algorithm.consensus.strategy == "ttrl" and cfg.data.views == "solver-only"
    assert cfg.algorithm.lr == 1e-4  # the preset's own values still apply over the group


def test_overrides_and_user_file(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("defaults:\n  - harmony_schema\n  - model: qwen3-8b-base\n  - data: gsm8k\n"
                    "  - algorithm: cross\n  - parallel: 1node-tp2\n  - rollout: vllm\n  - _self_\n"
                    "name: mine\nalgorithm: {lr: 1.0e-6}\n")
    cfg = load_config(str(user), ["rollout.n=4"])
    assert (cfg.name, cfg.data.benchmark, cfg.algorithm.consensus.strategy) == ("mine", "gsm8k", "cross")
    assert (cfg.algorithm.lr, cfg.rollout.n, cfg.parallel.tp) == (1e-6, 4, 2)
    # the resolved YAML round-trips through the loader
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(cfg))
    assert load_config(str(again)) == cfg


@pytest.mark.parametrize("name, overrides, fix", [
    ("nope", [], "use a preset"),
    ("/no/such/file.yaml", [], "not found"),
    ("cpu", ["algorithm.lr=-1"], "algorithm.lr must be > 0"),
    ("cpu", ["algorithm.bogus=1"], "algorithm.bogus"),
    ("cpu", ["model=nope"], "Available options"),
    ("cpu", ["rollout.n=abc"], "rollout.n"),
    ("cpu", ["algorithm.consensus.strategy=ttrl"], "data.views=solver-only"),
    ("qwen3-4b-math500", ["data.views=solver-only", "data.num_views=1", "algorithm.consensus.strategy=ttrl"], "warmup_strategy=null"),
    ("cpu", ["data.views=solver-only"], "consensus.strategy=ttrl"),
    ("cpu", ["algorithm.consensus.strategy=weighted-invariant", "data.num_views=3"], "data.num_views=2"),
    ("cpu", ["algorithm.consensus.match=fuzzy"], "consensus.match"),
    ("cpu", ["parallel.vpp=2"], "parallel.pp > 1"),
    ("cpu", ["log.wandb=maybe"], "log.wandb"),
    ("qwen3-4b-math500", ["model.path=null", "model.hf_config=null"], "model.path="),
])
def test_bad_configs_name_the_fix(name, overrides, fix):
    with pytest.raises(ConfigError, match=fix.replace(".", r"\.").replace("(", r"\(")):
        load_config(name, overrides)


def test_configs_dir_is_the_repo_one():
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "configs"


def test_typos_non_finite_numbers_and_yaml_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting algorithm.consensus.stratgy \(did you mean "
                                          r"algorithm.consensus.strategy\?\)"):
        load_config("cpu", ["+algorithm.consensus.stratgy=majority"])
    for value in ("inf", "nan", "-inf"):
        with pytest.raises(ConfigError, match="algorithm.lr: must be a finite number"):
            load_config("cpu", [f"algorithm.lr={value}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  - cpu\nseed: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error") as e:
        load_config(str(bad))
    assert "\n" not in str(e.value)
    assert load_config("cpu", ["+model.hf_config.rope_scaling=null"]).model.hf_config["rope_scaling"] is None


@pytest.mark.parametrize("override, setting", [
    ("rollout.max_response_tokens=0", "rollout.max_response_tokens must be in [1, "),
    ("rollout.max_prompt_tokens=-1", "rollout.max_prompt_tokens must be in [1, "),
    ("algorithm.grad_clip=-1", "algorithm.grad_clip must be >= 0"),
    ("algorithm.weight_decay=-5", "algorithm.weight_decay must be >= 0"),
    ("algorithm.betas=[2,3]", "algorithm.betas must be in [0, 1)"),
    ("algorithm.betas=[0.9,-0.1]", "algorithm.betas must be in [0, 1)"),
    ("algorithm.warmup_ratio=7", "algorithm.warmup_ratio must be in [0, 1]"),
    ("eval.limit=-3", "eval.limit must be >= 1"),
    ("algorithm.consensus.workers=0", "algorithm.consensus.workers must be in [1, 256]"),
    ("toy.pretrain_batch=0", "toy.pretrain_batch must be in [1, 65536]"),
    ("toy.pretrain_lr=-1", "toy.pretrain_lr must be > 0"),
    ("parallel.dp=-2", "parallel.dp must be in [1, "),
    ("data.num_views=1000000", "data.num_views must be in [1, 16]"),
    ("algorithm.clip_high=-0.1", "algorithm.clip_high must be >= 0"),
    ("algorithm.kl_clamp=0", "algorithm.kl_clamp must be > 0"),
    ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1]"),
    ("seed=-1", "seed must be in [0, "),
    ("name=", "name='': give the run a name"),
    ("name=..", "name='..'"),
    ("name=a/b", "without '/'"),
])
def test_out_of_range_values_name_the_setting_and_its_range(override, setting):
    with pytest.raises(ConfigError) as e:
        load_config("cpu", [override])
    assert setting in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_every_numeric_field_declares_its_range():
    import typing

    from harmony_mcore import config

    def sections(cls):
        yield cls
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                yield from sections(hint)

    missing = []
    for cls in sections(config.RunConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = typing.get_args(hints[f.name]) or (hints[f.name],)
            numeric = {int, float} & set(args) or any(typing.get_args(a) and {int, float} & set(typing.get_args(a))
                                                      for a in args)
            if numeric and f.name not in cls.RANGES:
                missing.append(f"{cls.__name__}.{f.name}")
            if f.name in cls.RANGES:
                config._interval(cls.RANGES[f.name])  # parses
        assert set(cls.RANGES) <= {f.name for f in dataclasses.fields(cls)}, cls
        config.check_ranges(cls(), "")  # the defaults lie in them
    assert not missing, missing


def test_yaml_alias_bomb_and_self_reference_are_refused(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["defaults:\n  - cpu\n  - _self_\n", 'toy: {cache_dir: x}\nl0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)]  # 9^9 values
    bomb.write_text("".join(lines))
    with pytest.raises(ConfigError, match="expands to more than 1,000,000 values"):
        load_config(str(bomb))
    loop = tmp_path / "loop.yaml"
    loop.write_text("defaults:\n  - cpu\n  - _self_\nseed: &s\n  - *s\n")
    with pytest.raises(ConfigError, match="alias refers to its own anchor"):
        load_config(str(loop))
    fine = tmp_path / "fine.yaml"  # aliases as such are fine
    fine.write_text("defaults:\n  - cpu\n  - _self_\nseed: &s 5\ndata: {seed: *s}\n")
    assert load_config(str(fine)).data.seed == 5
