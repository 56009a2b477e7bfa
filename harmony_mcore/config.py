"""Typed run configuration: these dataclasses are the Hydra structured-config schema.

Every numeric field has its interval in its section's RANGES (checked by `check_ranges`, which a
test keeps complete); every section validates the rest itself in `validate()`;
`RunConfig.validate()` adds the cross-section checks. Validation runs before any process group or
GPU memory is touched, and every failure names the setting to change. Defaults are the paper's
hyperparameters (docs/algorithm.md, "Defaults"). Names are checked against the registries they
select from (consensus strategies, rewards, equivalence modes), which never import this module.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harmony_mcore.dtypes import DTYPES


class ConfigError(ValueError):
    """A configuration problem, with the fix in its message."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


_INTERVAL = re.compile(r"([\[(])(-?[\d.e+]+|-inf), (-?[\d.e+]+|inf)([\])])")
BIG = 1 << 20  # the cap of sizes and counts whose work grows with them (tokens, samples, views, ranks)


def _interval(spec: str) -> tuple[float, float, bool, bool, str]:
    """"[1, inf)" -> (1, inf, closed below, closed above, ">= 1")."""
    m = _INTERVAL.fullmatch(spec)
    assert m, f"bad interval {spec!r}"
    lo, hi = float(m.group(2)), float(m.group(3))
    closed_lo, closed_hi = m.group(1) == "[", m.group(4) == "]"
    phrase = f"{'>=' if closed_lo else '>'} {m.group(2)}" if hi == math.inf else f"in {spec}"
    return lo, hi, closed_lo, closed_hi, phrase


def check_ranges(section: Any, prefix: str) -> None:
    """Each numeric field of `section` (each element of a tuple) lies in the interval its class
    declares in RANGES; None means unset and passes."""
    for name, spec in type(section).RANGES.items():
        value = getattr(section, name)
        lo, hi, closed_lo, closed_hi, phrase = _interval(spec)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is None:
                continue
            ok = (v >= lo if closed_lo else v > lo) and (v <= hi if closed_hi else v < hi)
            _check(ok, f"{prefix}{name} must be {phrase}, got {value!r}")


@dataclass
class ModelConfig:
    # An HF model directory (config.json [+ weights]) or a converted/trainer Megatron checkpoint.
    path: str | None = None
    # The HF config (config.json content). Without `path`: the model to build (random weights; tests,
    # the CPU default). With `path`: its expected architecture (lets `harmony plan` work offline;
    # the trainer checks it against path/config.json).
    hf_config: dict[str, Any] | None = None
    dtype: str = "bf16"  # bf16 | fp16 | fp32 (fp32 on CPU)
    recompute: str = "none"  # none | selective | full

    RANGES: ClassVar = {}

    def validate(self) -> None:
        _check(self.dtype in DTYPES, f"model.dtype={self.dtype!r}: use {', '.join(DTYPES)}")
        _check(self.recompute in ("none", "selective", "full"),
               f"model.recompute={self.recompute!r}: use none, selective or full")


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (None = off)
    dp: int | None = None  # None = world_size / (tp * pp)
    sequence_parallel: bool = False
    distributed_optimizer: bool = True  # Megatron's distributed optimizer (optimizer state sharded over DP)
    micro_batch_size: int = 8  # sequences per micro-batch in log-prob and update passes
    offload_reference: bool = False  # keep the frozen reference on host between uses (GPU)
    RANGES: ClassVar = {"tp": "[1, 1024]", "pp": "[1, 1024]", "vpp": "[1, 1024]", "dp": f"[1, {BIG}]",
                        "micro_batch_size": f"[1, {BIG}]"}

    def validate(self) -> None:
        check_ranges(self, "parallel.")
        _check(self.vpp is None or self.pp > 1, "parallel.vpp needs parallel.pp > 1")


@dataclass
class RolloutConfig:
    engine: str = "auto"  # auto (vllm on GPU, torch on CPU) | vllm | torch
    n: int = 16  # samples per problem per view
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_tokens: int = 1024
    max_response_tokens: int = 3072
    tp: int = 1  # rollout tensor parallel (vLLM), may differ from training TP
    gpu_memory_utilization: float = 0.6
    sleep_level: int = 1
    bucket_mb: int = 512  # weight-sync bucket size
    # engine-vs-trainer log-prob check after the first sync and every N steps (0 = off)
    logprob_check_every: int = 10
    logprob_check_tolerance: float = 0.1
    logprob_check_sequences: int = 4  # sequences scored by both engine and trainer in each check
    enforce_eager: bool = False  # vLLM: skip CUDA-graph capture (slower decode, faster start)
    vllm_extra: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM(...) keyword arguments
    # temperature 0: use eval.greedy; sleep_level 1 keeps the weights on the host, 2 drops them
    RANGES: ClassVar = {"n": "[1, 65536]", "temperature": "(0, inf)", "top_p": "(0, 1]",
                        "max_prompt_tokens": f"[1, {BIG}]", "max_response_tokens": f"[1, {BIG}]", "tp": "[1, 1024]",
                        "gpu_memory_utilization": "(0, 1)", "sleep_level": "[1, 2]", "bucket_mb": f"[1, {BIG}]",
                        "logprob_check_every": "[0, inf)", "logprob_check_tolerance": "(0, inf)",
                        "logprob_check_sequences": "[1, 1024]"}

    def validate(self) -> None:
        _check(self.engine in ("auto", "vllm", "torch"), f"rollout.engine={self.engine!r}: use auto, vllm or torch")
        check_ranges(self, "rollout.")


@dataclass
class ConsensusConfig:
    strategy: str = "harmonic-mean"
    warmup_strategy: str | None = "harmonic-mean"
    warmup_steps: int = 20
    match: str = "math"  # math | normalized | moderate | exact: equivalence used for voting
    # equivalence used for rewards (None = same as match); the reference votes exact, rewards moderate
    reward_match: str | None = None
    power_k: float | None = None  # power-mean exponent k
    power_lambda: float | None = None  # or lambda, with k = 1 - lambda
    pi: float = 0.5  # weighted-invariant
    min_score: float | None = None  # optional gate: no label below this score
    timeout_s: float = 2.0  # hard per-call timeout of math-verify
    workers: int = 2
    RANGES: ClassVar = {"warmup_steps": "[0, inf)", "power_k": "(-inf, inf)", "power_lambda": "(-inf, inf)",
                        "pi": "[0, 1]", "min_score": "(-inf, inf)", "timeout_s": "(0, 3600]", "workers": "[1, 256]"}

    def validate(self) -> None:
        check_ranges(self, "algorithm.consensus.")
        from harmony_mcore.answers.equivalence import MODES
        from harmony_mcore.consensus.strategies import STRATEGIES

        names = ", ".join(STRATEGIES)
        _check(self.strategy in STRATEGIES, f"consensus.strategy={self.strategy!r}: use one of {names}")
        _check(self.warmup_strategy is None or self.warmup_strategy in STRATEGIES,
               f"consensus.warmup_strategy={self.warmup_strategy!r}: use one of {names}, or null for no warmup")
        for key in ("match", "reward_match"):
            value = getattr(self, key)
            _check(value in MODES or (key == "reward_match" and value is None),
                   f"consensus.{key}={value!r}: use one of {', '.join(MODES)}")
        _check(not (self.power_k is not None and self.power_lambda is not None),
               "set only one of consensus.power_k and consensus.power_lambda")
        uses_power = "power-mean" in (self.strategy, self.warmup_strategy)
        _check(not uses_power or self.power_k is not None or self.power_lambda is not None,
               "consensus.strategy=power-mean needs consensus.power_k or consensus.power_lambda "
               "(k = 1 - lambda; lambda=2 is the harmonic mean)")


@dataclass
class AlgorithmConfig:
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    reward: str = "pseudo-label"  # pseudo-label | intuitor | rent | gt
    reframe_reward: bool = True  # augmented GRPO reward on the reframe view
    soft_reframe_reward: bool = False
    soft_top_k: int = 8  # candidates that get a soft reward: 1 - rank/(k-1) (reference: 8)
    format_penalty: float = 0.1
    sharpness_coef: float = 0.1
    normalize_adv_std: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    kl_coef: float = 0.005
    kl_clamp: float = 10.0
    lr: float = 3e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_ratio: float = 0.1
    # lr of the first warmup step: null = lr / warmup_steps (ours); 0.0 = the reference's (verl) warmup
    lr_warmup_init: float | None = None
    max_nonfinite_steps: int = 3  # consecutive skipped steps before the run stops
    # format_penalty 0 turns it off, grad_clip 0 turns clipping off, dual_clip null turns it off
    RANGES: ClassVar = {"soft_top_k": "[1, 65536]", "format_penalty": "[0, inf)", "sharpness_coef": "[0, inf)",
                        "clip_low": "[0, 1)", "clip_high": "[0, inf)", "dual_clip": "(1, inf)", "kl_coef": "[0, inf)",
                        "kl_clamp": "(0, inf)", "lr": "(0, inf)", "weight_decay": "[0, inf)", "betas": "[0, 1)",
                        "grad_clip": "[0, inf)", "warmup_ratio": "[0, 1]", "lr_warmup_init": "[0, inf)",
                        "max_nonfinite_steps": "[1, inf)"}

    def validate(self) -> None:
        from harmony_mcore.rewards import REWARDS

        self.consensus.validate()
        _check(self.reward in REWARDS, f"algorithm.reward={self.reward!r}: use one of {', '.join(REWARDS)}")
        check_ranges(self, "algorithm.")
        _check(self.lr_warmup_init is None or self.lr_warmup_init <= self.lr,
               "algorithm.lr_warmup_init must be in [0, algorithm.lr], or null for lr / warmup_steps")
        _check(len(self.betas) == 2, f"algorithm.betas={list(self.betas)}: give two numbers in [0, 1), e.g. [0.9, 0.999]")


@dataclass
class DataConfig:
    benchmark: str = "math500"  # a registered benchmark name, "toy-arith" (CPU default), or "file" with `path`
    path: str | None = None
    views: str = "reframe"  # reframe (dynamic reframe-and-solve) | static | solver-only
    prompts: str = "harmony"  # harmony (ours) | reference (the reference code's, verbatim; data/prompts.py)
    num_views: int = 2  # K: solver + (K-1) reframe views
    problems_per_step: int = 128
    epochs: int = 100
    limit: int | None = None  # use only the first N problems (smoke runs)
    seed: int = 1
    RANGES: ClassVar = {"num_views": "[1, 16]", "problems_per_step": f"[1, {BIG}]", "epochs": f"[1, {BIG}]",
                        "limit": "[1, inf)", "seed": "[0, 9223372036854775807]"}

    def validate(self) -> None:
        check_ranges(self, "data.")
        _check(self.views in ("reframe", "static", "solver-only"),
               f"data.views={self.views!r}: use reframe, static or solver-only")
        _check(self.prompts in ("harmony", "reference"), f"data.prompts={self.prompts!r}: use harmony or reference")
        _check(self.prompts != "reference" or self.views == "solver-only" or self.num_views == 2,
               "data.prompts=reference has one Reframer prompt (no strategy nudges): set data.num_views=2")
        _check(self.prompts != "reference" or self.benchmark != "toy-arith",
               "data.prompts=reference does not apply to the toy task (its prompts are the toy's): use a benchmark")
        _check(self.benchmark != "file" or self.path, "data.benchmark=file needs data.path=/path/to/problems.jsonl")


@dataclass
class EvalConfig:
    every: int = 0  # optimizer steps between evaluations (0 = only before and after training)
    n: int = 16  # samples per problem (avg@n, pass@k, maj@k)
    temperature: float = 0.8
    top_p: float = 0.95
    greedy: bool = False
    benchmarks: list[str] = field(default_factory=list)  # empty = the training benchmark
    limit: int | None = None
    # temperature 0: set eval.greedy=true instead
    RANGES: ClassVar = {"every": "[0, inf)", "n": "[1, 65536]", "temperature": "(0, inf)", "top_p": "(0, 1]",
                        "limit": "[1, inf)"}

    def validate(self) -> None:
        check_ranges(self, "eval.")


@dataclass
class CheckpointConfig:
    dir: str | None = None  # default: <output_dir>/checkpoints
    every: int = 20  # optimizer steps between checkpoints (0 = only at the end and on signals)
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in dir, if any) | never | /path/to/a/step_dir

    RANGES: ClassVar = {"every": "[0, inf)", "keep_last": "[1, inf)"}

    def validate(self) -> None:
        check_ranges(self, "checkpoint.")
        _check(bool(self.resume), "checkpoint.resume must be auto, never or a checkpoint path")


@dataclass
class LogConfig:
    wandb: str = "offline"  # offline | online | disabled (WANDB_MODE overrides)
    wandb_project: str = "harmony_mcore"
    progress: bool = True  # rich progress bars per phase (rank 0)
    plot: bool = True  # PNG report of the curves at the end

    RANGES: ClassVar = {}

    def validate(self) -> None:
        _check(self.wandb in ("offline", "online", "disabled"),
               f"log.wandb={self.wandb!r}: use offline, online or disabled")


@dataclass
class ToyConfig:
    """The embedded CPU default's task (data.benchmark=toy-arith): generated arithmetic problems."""

    num_problems: int = 128  # the unlabeled test-time set
    pretrain_steps: int = 370  # supervised warm start of the tiny model (cached)
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 64
    cache_dir: str | None = None  # None = $HARMONY_CACHE or ~/.cache/harmony_mcore

    RANGES: ClassVar = {"num_problems": f"[1, {BIG}]", "pretrain_steps": f"[0, {BIG}]", "pretrain_lr": "(0, inf)",
                        "pretrain_batch": "[1, 65536]"}

    def validate(self) -> None:
        check_ranges(self, "toy.")


@dataclass
class RunConfig:
    name: str = "harmony"
    output_dir: str = "runs/${name}"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    steps: int | None = None  # None = epochs * (problems // problems_per_step): a partial last batch is dropped
    # Where the cluster layout is meant to fit (read by `harmony plan`), e.g. "2x8xH100-80GB"; informative.
    fits: str | None = None
    RANGES: ClassVar = {"seed": "[0, 9223372036854775807]", "steps": "[1, inf)"}

    def validate(self) -> None:
        for section in (self.model, self.parallel, self.rollout, self.algorithm, self.data, self.eval,
                        self.checkpoint, self.log, self.toy):
            section.validate()
        check_ranges(self, "")
        _check(bool(self.name.strip()) and "/" not in self.name and self.name not in (".", ".."),
               f"name={self.name!r}: give the run a name (it names output_dir=runs/<name>), without '/'")
        _check(bool(str(self.output_dir).strip()), "output_dir is empty: set output_dir=runs/<name> or a path")
        _check(self.model.path is not None or self.model.hf_config is not None or self.data.benchmark == "toy-arith",
               "no model: set model.path=/path/to/hf_or_megatron_checkpoint (or model.hf_config for a random model)")
        cons = self.algorithm.consensus
        used = {cons.strategy} | ({cons.warmup_strategy} if cons.warmup_strategy and cons.warmup_steps > 0 else set())
        one_view = self.data.views == "solver-only" or self.data.num_views == 1
        if "ttrl" in used:
            _check(one_view, "consensus strategy ttrl uses the solver view only: also set data.views=solver-only "
                   "and data.num_views=1 (or use the preset group algorithm=ttrl)")
        if one_view:
            two_view = sorted(used & {"harmonic-mean", "power-mean", "weighted-invariant", "cross", "self"})
            _check(not two_view, f"data.views=solver-only has one view but consensus uses {two_view}: use "
                   "consensus.strategy=ttrl with consensus.warmup_strategy=null (or algorithm=ttrl)")
        if "weighted-invariant" in used:
            _check(self.data.num_views == 2, "consensus.strategy=weighted-invariant is defined for 2 views: "
                   "set data.num_views=2 or use harmonic-mean / power-mean")


# --- Loading: Hydra composition of configs/ over the schema above ---------------------------------

CONFIG_DIR = Path(os.environ.get("HARMONY_CONFIG_DIR") or Path(__file__).resolve().parents[1] / "configs")
SCHEMA_NAME = "harmony_schema"


def presets() -> list[str]:
    """Names of the experiment presets (the top-level files of configs/)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Compose a preset name ("cpu", "qwen3-4b-math500") or a YAML file with Hydra overrides
    ("algorithm.lr=1e-6", "parallel=8b-2node"), merge it over the typed schema and validate it.

    A user file may use the groups of configs/ in its defaults list. Any problem is a ConfigError.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)
    name_or_path = name_or_path or "cpu"
    path = Path(name_or_path).expanduser()
    overrides = list(overrides)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {path} not found: pass an existing .yaml or a preset ({', '.join(presets())})")
        from harmony_mcore.loading import check_yaml

        check_yaml(path, ConfigError)  # an alias bomb or a self-referencing alias: refused before Hydra expands it
        config_dir, config_name = path.resolve().parent, path.stem
        overrides.append(f"hydra.searchpath=[file://{CONFIG_DIR}]")
    else:
        if name_or_path not in presets():
            raise ConfigError(f"unknown config {name_or_path!r}: use a preset ({', '.join(presets())}) "
                              "or a path to a .yaml file")
        config_dir, config_name = CONFIG_DIR, name_or_path
    import yaml

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            composed = compose(config_name=config_name, overrides=overrides)
        unknown = _unknown_keys(OmegaConf.to_container(composed), RunConfig(), "")
        if unknown:  # `+key=value` adds keys the schema would otherwise keep silently
            raise ConfigError(f"config {name_or_path!r}: unknown setting {'; '.join(unknown)}")
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), composed)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # Hydra raises ValueError for some
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise ConfigError(" ".join(f"config {name_or_path!r} with overrides {overrides}: {err}{cause}".split())) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {name_or_path!r}: YAML syntax error: {' '.join(str(err).split())}") from None
    finally:
        GlobalHydra.instance().clear()
    not_finite = _non_finite(cfg, "")
    _check(not not_finite, f"{', '.join(not_finite)}: must be a finite number")
    cfg.validate()
    return cfg


def _unknown_keys(node: Any, schema: Any, prefix: str) -> list[str]:
    """Keys of the composed config that the schema does not have (with the closest known name)."""
    import difflib

    if not (isinstance(node, dict) and dataclasses.is_dataclass(schema)):
        return []  # a free-form field (e.g. model.hf_config) takes any keys
    known = [f.name for f in dataclasses.fields(schema)]
    found = []
    for key, value in node.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            found.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
        else:
            found += _unknown_keys(value, getattr(schema, key), f"{prefix}{key}.")
    return found


def _non_finite(obj: Any, prefix: str) -> list[str]:
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [prefix.rstrip(".")]
    if dataclasses.is_dataclass(obj):
        return [name for f in dataclasses.fields(obj) for name in _non_finite(getattr(obj, f.name), f"{prefix}{f.name}.")]
    return []


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (saved into the run directory and checkpoints)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
