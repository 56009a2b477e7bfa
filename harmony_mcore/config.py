"""Typed run configuration: these dataclasses are the Hydra structured-config schema.

Every section validates itself in `validate()`; `RunConfig.validate()` adds the cross-section
checks. Validation runs before any process group or GPU memory is touched, and every failure
names the setting to change. Defaults are the paper's hyperparameters (shared/ALGORITHM.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, with the fix in its message."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelConfig:
    # An HF model directory (config.json [+ weights]) or a converted/trainer Megatron checkpoint.
    path: str | None = None
    # Or an inline HF config dict (tests, the CPU default); weights are then random or pretrained here.
    hf_config: dict[str, Any] | None = None
    dtype: str = "bf16"  # bf16 | fp16 | fp32 (fp32 on CPU)
    recompute: str = "none"  # none | selective | full

    def validate(self) -> None:
        _check(self.dtype in ("bf16", "fp16", "fp32"), f"model.dtype={self.dtype!r}: use bf16, fp16 or fp32")
        _check(self.recompute in ("none", "selective", "full"),
               f"model.recompute={self.recompute!r}: use none, selective or full")


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per rank (None = off)
    dp: int | None = None  # None = world_size / (tp * pp)
    sequence_parallel: bool = False
    distributed_optimizer: bool = True  # GPU only; CPU uses torch AdamW over DDP main_grad
    micro_batch_size: int = 8  # sequences per micro-batch in log-prob and update passes
    offload_reference: bool = False  # keep the frozen reference on host between uses (GPU)

    def validate(self) -> None:
        for name in ("tp", "pp", "micro_batch_size"):
            _check(getattr(self, name) >= 1, f"parallel.{name} must be >= 1")
        _check(self.vpp is None or self.vpp >= 1, "parallel.vpp must be >= 1 or null")
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
    logprob_check_every: int = 0  # steps between engine-vs-trainer log-prob checks (0 = off)
    logprob_check_tolerance: float = 0.1

    def validate(self) -> None:
        _check(self.engine in ("auto", "vllm", "torch"), f"rollout.engine={self.engine!r}: use auto, vllm or torch")
        _check(self.n >= 1, "rollout.n must be >= 1")
        _check(self.temperature > 0, "rollout.temperature must be > 0 (use eval.greedy for greedy decoding)")
        _check(0 < self.top_p <= 1, "rollout.top_p must be in (0, 1]")
        _check(0 < self.gpu_memory_utilization < 1, "rollout.gpu_memory_utilization must be in (0, 1)")
        _check(self.bucket_mb >= 1, "rollout.bucket_mb must be >= 1")


@dataclass
class ConsensusConfig:
    strategy: str = "harmonic-mean"
    warmup_strategy: str | None = "harmonic-mean"
    warmup_steps: int = 20
    match: str = "math"  # math | normalized | exact
    # Equivalence deciding which answers match a label when rewarding (None = `match`). The
    # `reference` preset votes on exact strings and rewards with `math`, as the reference code does.
    reward_match: str | None = None
    power_k: float | None = None  # power-mean exponent k
    power_lambda: float | None = None  # or lambda, with k = 1 - lambda
    pi: float = 0.5  # weighted-invariant
    min_score: float | None = None  # optional gate: no label below this score
    timeout_s: float = 2.0  # hard per-call timeout of math-verify
    workers: int = 2

    def validate(self) -> None:
        from harmony_mcore.consensus.strategies import STRATEGIES

        names = ", ".join(STRATEGIES)
        _check(self.strategy in STRATEGIES, f"consensus.strategy={self.strategy!r}: use one of {names}")
        _check(self.warmup_strategy is None or self.warmup_strategy in STRATEGIES,
               f"consensus.warmup_strategy={self.warmup_strategy!r}: use one of {names}, or null for no warmup")
        _check(self.match in ("math", "normalized", "exact"),
               f"consensus.match={self.match!r}: use math, normalized or exact")
        _check(self.reward_match in (None, "math", "normalized", "exact"),
               f"consensus.reward_match={self.reward_match!r}: use math, normalized, exact or null (= match)")
        _check(not (self.power_k is not None and self.power_lambda is not None),
               "set only one of consensus.power_k and consensus.power_lambda")
        uses_power = "power-mean" in (self.strategy, self.warmup_strategy)
        _check(not uses_power or self.power_k is not None or self.power_lambda is not None,
               "consensus.strategy=power-mean needs consensus.power_k or consensus.power_lambda "
               "(k = 1 - lambda; lambda=2 is the harmonic mean)")
        _check(0.0 <= self.pi <= 1.0, "consensus.pi must be in [0, 1]")
        _check(self.warmup_steps >= 0, "consensus.warmup_steps must be >= 0")
        _check(self.timeout_s > 0, "consensus.timeout_s must be > 0")


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
    max_nonfinite_steps: int = 3  # consecutive skipped steps before the run stops

    def validate(self) -> None:
        self.consensus.validate()
        _check(self.reward in ("pseudo-label", "intuitor", "rent", "gt"),
               f"algorithm.reward={self.reward!r}: use pseudo-label, intuitor, rent or gt")
        _check(self.soft_top_k >= 1, "algorithm.soft_top_k must be >= 1")
        _check(self.format_penalty >= 0, "algorithm.format_penalty must be >= 0 (0 turns it off)")
        _check(self.lr > 0, "algorithm.lr must be > 0")
        _check(0 <= self.clip_low < 1 and self.clip_high >= 0, "algorithm.clip_low must be in [0, 1), clip_high >= 0")
        _check(self.dual_clip is None or self.dual_clip > 1, "algorithm.dual_clip must be > 1 or null")
        _check(self.kl_coef >= 0, "algorithm.kl_coef must be >= 0")


@dataclass
class DataConfig:
    benchmark: str = "math500"  # a registered benchmark name, or "file" with `path`
    path: str | None = None
    views: str = "reframe"  # reframe (dynamic reframe-and-solve) | static | solver-only
    num_views: int = 2  # K: solver + (K-1) reframe views
    problems_per_step: int = 128
    epochs: int = 100
    seed: int = 1

    def validate(self) -> None:
        _check(self.views in ("reframe", "static", "solver-only"),
               f"data.views={self.views!r}: use reframe, static or solver-only")
        _check(self.num_views >= 1, "data.num_views must be >= 1")
        _check(self.problems_per_step >= 1, "data.problems_per_step must be >= 1")


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
    steps: int | None = None  # None = epochs * (problems // problems_per_step)
    eval_every: int = 0
    save_every: int = 20
    keep_last: int = 2
    wandb: str = "offline"  # offline | online | disabled

    def validate(self) -> None:
        for section in (self.model, self.parallel, self.rollout, self.algorithm, self.data):
            section.validate()
        _check(self.wandb in ("offline", "online", "disabled"), f"wandb={self.wandb!r}: use offline, online or disabled")
