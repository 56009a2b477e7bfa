"""Per-rank GPU memory and step FLOPs of a run, without a GPU (`harmony plan`: plan_cli.py).

Everything here is a pure function of the model's HF config and the run config, so it runs on a
laptop before any cluster hours are spent. The formulas (and the assumptions behind each
constant) are stated in docs/ops.md with a worked example (Qwen3-8B on 8xH100) that a test pins.

Memory is per rank, in bytes, for each pipeline stage; every sequence is assumed to be at its
maximum length (prompt + response), the worst case a run will meet.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from harmony_mcore.config import ConfigError, RunConfig
from harmony_mcore.models import families
from harmony_mcore.models.family import ModelShape
from harmony_mcore.preflight import preflight

GiB = 2**30


# --------------------------------------------------------------------------------------------
# Inputs: the model's shape, the hardware, and the assumptions that are not in any config.


@dataclass(frozen=True)
class Hardware:
    name: str
    memory: int  # bytes torch can allocate on one GPU
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bandwidth: float  # bytes/s


# torch reports 79.1 GiB total on an H100 SXM 80GB; 989 TFLOP/s dense BF16; 3.35 TB/s HBM3.
H100 = Hardware("H100 SXM 80GB", int(79.1 * GiB), 989e12, 3.35e12)
HARDWARE = {"H100-80GB": H100}  # the names a preset's `fits` note may use


@dataclass(frozen=True)
class Assumptions:
    """Constants of the estimate that no config holds; each is printed with the plan."""

    mfu: float = 0.35  # model-FLOPs utilisation for the step-time floor
    headroom: float = 0.10  # share of GPU memory kept free: fragmentation, spikes
    runtime_overhead: int = 3 * GiB  # CUDA context, NCCL buffers, vLLM CUDA graphs while asleep
    vllm_overhead: int = 3 * GiB  # vLLM's profiled activation peak + CUDA graphs inside its budget
    grad_bytes: int = 4  # Megatron DDP main_grad buffers are fp32 for bf16 training
    optim_bytes: int = 12  # Adam: fp32 master weights + exp_avg + exp_avg_sq
    logit_bytes: int = 6  # bf16 logits + fp32 log-softmax kept for backward, per vocab entry
    # The cluster has Transformer Engine (NGC containers do): its fused attention keeps no s x s
    # scores and it allows sequence parallelism; without it the local spec's attention keeps them.
    transformer_engine: bool = True
    vocab_multiple: int = 128  # Megatron pads the vocabulary to a multiple of this x TP


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    vpp: int | None
    dp: int
    sequence_parallel: bool
    distributed_optimizer: bool
    recompute: str  # none | selective | full
    micro_batch_size: int
    offload_reference: bool

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        vpp = f"xVPP{self.vpp}" if self.vpp else ""
        return (f"TP{self.tp}xPP{self.pp}{vpp}xDP{self.dp}, mbs {self.micro_batch_size}, "
                f"recompute {self.recompute}, {'dist' if self.distributed_optimizer else 'plain'} optimizer"
                f"{', SP' if self.sequence_parallel else ''}{', reference offloaded' if self.offload_reference else ''}")


def parse_fits(note: str) -> tuple[int, Hardware]:
    """A preset's `fits` note, "NODESxGPUSxHARDWARE" (e.g. "2x8xH100-80GB") -> (GPUs, hardware)."""
    match = re.fullmatch(r"(\d+)x(\d+)x(.+)", note.strip())
    if not match or match[3] not in HARDWARE:
        raise ConfigError(f"fits={note!r}: write NODESxGPUS_PER_NODExHARDWARE, e.g. 2x8xH100-80GB "
                          f"(hardware: {', '.join(HARDWARE)})")
    return int(match[1]) * int(match[2]), HARDWARE[match[3]]


def job_gpus(cfg: RunConfig, gpus: int | None) -> int:
    """GPUs of the job: given, else the preset's `fits` note, else TP*PP*DP."""
    if gpus is not None:
        return gpus
    return parse_fits(cfg.fits)[0] if cfg.fits else cfg.parallel.tp * cfg.parallel.pp * (cfg.parallel.dp or 1)


def layout_from_config(cfg: RunConfig, gpus: int) -> Layout:
    p = cfg.parallel
    return Layout(p.tp, p.pp, p.vpp, gpus // (p.tp * p.pp), p.sequence_parallel, p.distributed_optimizer,
                  cfg.model.recompute, p.micro_batch_size, p.offload_reference)


def cluster_preflight(cfg: RunConfig, gpus: int, hf: dict[str, Any], transformer_engine: bool) -> None:
    """The run's own preflight (harmony_mcore.preflight), for the cluster rather than this machine:
    preflight allows sequence parallelism only where Transformer Engine imports, and the plan
    is made where it may not."""
    if transformer_engine:
        cfg = replace(cfg, parallel=replace(cfg.parallel, sequence_parallel=False))
    preflight(cfg, gpus, hf, on_gpu=True)


def preflight_check(cfg: RunConfig, hf: dict[str, Any], transformer_engine: bool = True) -> Callable[[Layout], None]:
    """A check that raises the trainer's own ConfigError for a layout the run would refuse: the
    plan never plans, or suggests, what cannot start."""
    def check(lay: Layout) -> None:
        par = replace(cfg.parallel, tp=lay.tp, pp=lay.pp, vpp=lay.vpp, dp=lay.dp, micro_batch_size=lay.micro_batch_size,
                      sequence_parallel=lay.sequence_parallel, distributed_optimizer=lay.distributed_optimizer,
                      offload_reference=lay.offload_reference)
        cluster_preflight(replace(cfg, parallel=par), lay.gpus, hf, transformer_engine)

    return check


# --------------------------------------------------------------------------------------------
# Parameters: exact counts of Megatron's GPTModel (local or TE spec; same counts).


def layer_params(m: ModelShape, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank."""
    qkv_out = (m.heads + 2 * m.kv_heads) * m.head_dim
    attn = qkv_out * m.hidden // tp + (qkv_out // tp if m.qkv_bias else 0) + m.heads * m.head_dim * m.hidden // tp
    mlp = 3 * m.hidden * m.ffn // tp  # fc1 = [gate; up], fc2
    norms = 2 * m.hidden + (2 * m.head_dim if m.qk_norm else 0)  # replicated across TP
    return attn + mlp + norms


def stage_layers(m: ModelShape, pp: int) -> int:
    if m.layers % pp:
        raise ConfigError(f"{m.layers} layers do not split over parallel.pp={pp}: pick a pp that divides {m.layers}")
    return m.layers // pp


def params_per_rank(m: ModelShape, tp: int, pp: int, vocab_multiple: int = 128) -> list[int]:
    """Parameters held by one TP rank of each pipeline stage (index = stage).

    The first stage holds the embedding, the last the final norm and the output layer; with tied
    embeddings and PP > 1 the last stage still holds a copy of the embedding (Megatron keeps it in
    sync by an all-reduce), with PP = 1 the output layer reuses the embedding.
    """
    vocab_shard = families.padded_vocab_size(m.vocab, tp, vocab_multiple) // tp * m.hidden
    per_stage = []
    for stage in range(pp):
        n = stage_layers(m, pp) * layer_params(m, tp)
        if stage == 0:
            n += vocab_shard
        if stage == pp - 1:
            n += m.hidden + (0 if (m.tied and pp == 1) else vocab_shard)
        per_stage.append(n)
    return per_stage


def total_params(m: ModelShape) -> int:
    """Unpadded parameter count of the HF model (what the rollout engine holds)."""
    return sum(params_per_rank(m, 1, 1, vocab_multiple=1))


# --------------------------------------------------------------------------------------------
# Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
# Models", Sec. 4, generalised to GQA, SwiGLU, RMSNorm and no dropout; see docs/ops.md).


def layer_activation_bytes(m: ModelShape, s: int, b: int, tp: int, sp: bool, recompute: str,
                           flash: bool = True) -> int:
    """Bytes one layer keeps for backward for a micro-batch of b sequences of s tokens (bf16).

    Per token: norm inputs and linear inputs in the hidden dimension, 8h (replicated over TP
    unless sequence parallel); q, k, v, attention output (2(a+2g)d + 2ad) and q/k-norm inputs
    (2(a+g)d, Qwen3) split over TP; SwiGLU keeps gate and up (4f) and its output (2f), split over
    TP. Unfused attention adds softmax scores 2as^2 per sequence. Selective recompute drops the
    scores; full recompute keeps only the layer input (2h per token).
    """
    a, g, d, h, f = m.heads, m.kv_heads, m.head_dim, m.hidden, m.ffn
    hidden_div = tp if sp else 1
    if recompute == "full":
        return 2 * s * b * h // hidden_div
    per_token = 8 * h // hidden_div
    per_token += (2 * (a + 2 * g) * d + 2 * a * d + (2 * (a + g) * d if m.qk_norm else 0) + 6 * f) // tp
    scores = 0 if (flash or recompute == "selective") else 2 * a * s * s * b // tp
    return per_token * s * b + scores


def inflight_microbatches(stage: int, pp: int, vpp: int | None, microbatches: int) -> float:
    """Micro-batches whose activations a stage holds at the 1F1B peak, in units of the stage's layers.

    1F1B: stage i holds pp - i micro-batches. Interleaved (vpp chunks): stage 0 holds
    2(pp-1) + (vpp-1)pp + 1 chunk-micro-batches of L/(pp*vpp) layers each = 1 + (pp-1)/(pp*vpp)
    stages' worth of micro-batches over pp (Korthikanti et al., Sec. 4.2.3).
    """
    if not vpp:
        return min(microbatches, pp - stage)
    chunks = 2 * (pp - stage - 1) + (vpp - 1) * pp + 1
    return min(microbatches * vpp, chunks) / vpp


def logits_bytes(m: ModelShape, s: int, b: int, tp: int, a: Assumptions) -> int:
    return s * b * families.padded_vocab_size(m.vocab, tp, a.vocab_multiple) // tp * a.logit_bytes


# --------------------------------------------------------------------------------------------
# Rollout engine (vLLM, colocated: it shares each GPU with the trainer).


def kv_bytes_per_token(m: ModelShape, rollout_tp: int, dtype_bytes: int = 2) -> int:
    """K and V for every layer on one GPU; KV heads split over rollout TP (replicated past g)."""
    heads_per_gpu = math.ceil(m.kv_heads / rollout_tp)
    return 2 * m.layers * heads_per_gpu * m.head_dim * dtype_bytes


# --------------------------------------------------------------------------------------------
# FLOPs (model FLOPs: a matmul of m x k by k x n counts 2mkn; recomputation is not counted).


def matmul_params(m: ModelShape) -> int:
    per_layer = m.hidden * (m.heads + 2 * m.kv_heads) * m.head_dim + m.heads * m.head_dim * m.hidden + 3 * m.hidden * m.ffn
    return m.layers * per_layer + m.hidden * m.vocab  # + the output layer; the embedding is a lookup


def forward_flops(m: ModelShape, s: int) -> int:
    """One causal forward pass over a sequence of s tokens: 2 * matmul params per token plus
    QK^T and AV, 4 * a * d per layer per (query, key) pair, s(s+1)/2 pairs."""
    return 2 * matmul_params(m) * s + 4 * m.layers * m.heads * m.head_dim * (s * (s + 1) // 2)


# --------------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class Workload:
    sequences: int  # per step, all views
    seq_len: int
    response_len: int
    logprob_passes: int  # old policy + reference (skipped when kl_coef == 0)
    engine: str  # vllm | torch
    rollout_tp: int
    memory_fraction: float  # vLLM's share of each GPU (weights + KV cache + its activations)
    sleep_level: int  # vLLM level 1 keeps a host copy of its weights while asleep
    mean_seq_len: int | None = None  # average prompt + response tokens, for FLOPs (None = seq_len)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Workload:
        views = 1 if cfg.data.views == "solver-only" else cfg.data.num_views
        r = cfg.rollout
        return cls(
            sequences=cfg.data.problems_per_step * views * r.n,
            seq_len=r.max_prompt_tokens + r.max_response_tokens,
            response_len=r.max_response_tokens,
            logprob_passes=1 + (cfg.algorithm.kl_coef > 0),
            engine="torch" if r.engine == "torch" else "vllm",  # auto is vLLM on a GPU
            rollout_tp=r.tp,
            memory_fraction=r.gpu_memory_utilization,
            sleep_level=r.sleep_level,
        )


def plan(m: ModelShape, lay: Layout, w: Workload, hw: Hardware = H100, a: Assumptions = Assumptions(),
         param_bytes: int = 2) -> dict[str, Any]:
    """Memory per rank by phase for each pipeline stage, and FLOPs / time floor of one step."""
    if w.sequences % lay.dp:
        raise ConfigError(f"{w.sequences} sequences per step do not split over DP={lay.dp}: "
                          "change data.problems_per_step or rollout.n")
    microbatches = math.ceil(w.sequences // lay.dp / lay.micro_batch_size)
    s, b = w.seq_len, lay.micro_batch_size
    layers = stage_layers(m, lay.pp)
    limit = int(hw.memory * (1 - a.headroom))

    # Rollout. vLLM takes memory_fraction of the GPU; its KV cache gets what its weights leave.
    # The torch engine holds an HF copy of the model and the KV cache of all its sequences.
    engine_weights = total_params(m) * 2 // w.rollout_tp
    kv_token = kv_bytes_per_token(m, w.rollout_tp)
    engines = lay.gpus // w.rollout_tp
    seqs_per_engine = math.ceil(w.sequences / engines)
    if w.engine == "vllm":
        rollout_mem = int(w.memory_fraction * hw.memory)
        kv_pool = rollout_mem - engine_weights - a.vllm_overhead
    else:
        kv_pool = seqs_per_engine * s * kv_token
        rollout_mem = engine_weights + kv_pool
    concurrent = min(max(kv_pool, 0) // (kv_token * s), seqs_per_engine)

    optim_bytes = a.optim_bytes if param_bytes < 4 else a.optim_bytes - 4  # fp32 weights are their own master copy
    stages = []
    for stage, n in enumerate(params_per_rank(m, lay.tp, lay.pp, a.vocab_multiple)):
        weights, grads, reference = n * param_bytes, n * a.grad_bytes, n * param_bytes
        optim = n * optim_bytes // (lay.dp if lay.distributed_optimizer else 1)
        act_layer = layer_activation_bytes(m, s, b, lay.tp, lay.sequence_parallel, lay.recompute, a.transformer_engine)
        full_layer = layer_activation_bytes(m, s, b, lay.tp, lay.sequence_parallel, "none", a.transformer_engine)
        activations = int(act_layer * layers * inflight_microbatches(stage, lay.pp, lay.vpp, microbatches))
        if lay.recompute == "full":  # the layer being recomputed holds its full activations once
            activations += full_layer
        logits = logits_bytes(m, s, b, lay.tp, a) if stage == lay.pp - 1 else 0
        resident = weights + grads + optim + a.runtime_overhead
        ref_on_gpu = 0 if lay.offload_reference else reference
        stages.append({
            "stage": stage, "params": n, "weights": weights, "grads": grads, "optimizer": optim,
            "optimizer_without_dist": n * optim_bytes, "optimizer_with_dist": n * optim_bytes // lay.dp,
            "reference": reference, "reference_on_gpu": ref_on_gpu,
            "activation_per_layer_microbatch": act_layer, "activations": activations, "logits": logits,
            "peak_generate": resident + ref_on_gpu + rollout_mem,
            # A forward-only pass keeps one layer's activations at a time, plus the logits; the
            # reference is on the GPU for its own pass even when offloaded between uses.
            "peak_logprob": resident + reference + full_layer + logits,
            "peak_train": resident + ref_on_gpu + activations + logits,
            "host": (reference if lay.offload_reference else 0)
                    + (engine_weights if w.engine == "vllm" and w.sleep_level == 1 else 0),
        })
    phases = ("generate", "logprob", "train")
    peak = max(st[f"peak_{ph}"] for st in stages for ph in phases)
    worst = next(st for st in stages if peak in (st[f"peak_{ph}"] for ph in phases))
    binding = next(ph for ph in phases if worst[f"peak_{ph}"] == peak)
    # The largest vLLM share the generate phase leaves room for, in steps of 0.05.
    max_fraction = math.floor(20 * min(limit - (st["peak_generate"] - rollout_mem) for st in stages) / hw.memory) / 20

    # Memory is sized for full-length sequences; FLOPs follow the average length when it is given.
    fwd = forward_flops(m, w.mean_seq_len or s) * w.sequences
    flops = {"generate": fwd, "logprob": fwd * w.logprob_passes, "train": 3 * fwd}
    rate = a.mfu * hw.bf16_flops * lay.gpus
    waves = math.ceil(seqs_per_engine / concurrent) if concurrent else None
    time_floor = {k: v / rate for k, v in flops.items()}
    # Decoding reads every weight once per token step: a bandwidth floor the FLOPs do not show. With
    # continuous batching the steps are the engine's response tokens over the sequences it holds at once.
    fill = (w.mean_seq_len or s) / s
    held = min(seqs_per_engine, max(kv_pool, 0) // math.ceil(kv_token * s * fill))
    decode_steps = math.ceil(seqs_per_engine * w.response_len * fill / held) if held else 0
    time_floor["generate"] = max(time_floor["generate"], decode_steps * engine_weights / hw.hbm_bandwidth)

    problems = []
    if not concurrent:
        problems.append(f"rollout: {rollout_mem / GiB:.1f} GiB (rollout.gpu_memory_utilization={w.memory_fraction}) "
                        f"does not hold the engine's weights ({engine_weights / GiB:.1f} GiB) and one {s}-token "
                        "sequence: raise rollout.gpu_memory_utilization or rollout.tp")
    if peak > limit:
        fix = (f"; set rollout.gpu_memory_utilization<={max_fraction:.2f} or shrink the trainer's share"
               if binding == "generate" and max_fraction > 0 else "")
        problems.append(f"{binding} phase peaks at {peak / GiB:.1f} GiB on stage {worst['stage']}, over "
                        f"{limit / GiB:.1f} GiB ({hw.name} less {a.headroom:.0%} headroom){fix}")
    return {
        "model": asdict(m), "layout": asdict(lay) | {"gpus": lay.gpus}, "workload": asdict(w),
        "hardware": asdict(hw), "assumptions": asdict(a), "param_bytes": param_bytes,
        "params_total": total_params(m), "microbatches_per_dp_rank": microbatches,
        "stages": stages, "worst_stage": worst["stage"], "binding_phase": binding, "peak": peak, "limit": limit,
        # Host memory of a node of 8 GPUs (or of all of them, if fewer): vLLM level-1 sleep and reference offload.
        "host_per_node": sum(st["host"] for st in stages) * lay.tp * lay.dp * min(8, lay.gpus) // lay.gpus,
        "rollout": {"engine": w.engine, "engine_weights": engine_weights, "memory": rollout_mem, "kv_pool": kv_pool,
                    "kv_bytes_per_token": kv_token, "engines": engines, "sequences_per_engine": seqs_per_engine,
                    "concurrent_sequences": concurrent, "waves": waves, "decode_steps": decode_steps,
                    "max_memory_fraction": max_fraction},
        "flops": flops | {"total": sum(flops.values())},
        "time_floor_s": time_floor | {"total": sum(time_floor.values())},
        "fits": not problems, "problems": problems,
    }


def candidate_layouts(lay: Layout, max_tp: int = 8, sequence_parallel: bool = True):
    """Layouts on the same GPUs, smallest model-parallel size first; at each size the cheap
    memory savers come first (distributed optimizer, reference offload, smaller
    micro-batches), recomputation last."""
    gpus = lay.gpus
    for mp in (n for n in range(1, gpus + 1) if gpus % n == 0):
        # The configured TP first, then wider TP (within a node) before deeper PP.
        tps = sorted((t for t in range(1, min(mp, max_tp) + 1) if mp % t == 0), key=lambda t: (t != lay.tp, -t))
        for tp in tps:
            pp = mp // tp
            for recompute in dict.fromkeys((lay.recompute, "selective", "full")):
                mbs = lay.micro_batch_size
                while mbs >= 1:
                    yield replace(lay, tp=tp, pp=pp, vpp=lay.vpp if pp > 1 else None, dp=gpus // mp,
                                  distributed_optimizer=True, offload_reference=True, recompute=recompute,
                                  micro_batch_size=mbs, sequence_parallel=sequence_parallel and tp > 1)
                    mbs //= 2


def suggest(m: ModelShape, lay: Layout, w: Workload, hw: Hardware = H100, a: Assumptions = Assumptions(),
            param_bytes: int = 2, check: Callable[[Layout], None] | None = None) -> tuple[Layout, float] | None:
    """The smallest valid layout on the same GPUs that fits, with the vLLM memory fraction it needs
    (the configured one, or lower when that is what the generate phase needs); None if none fits."""
    for cand in candidate_layouts(lay, sequence_parallel=a.transformer_engine):
        try:
            if check:
                check(cand)
            p = plan(m, cand, w, hw, a, param_bytes)
        except ConfigError:  # a layout the run would refuse
            continue
        if p["fits"]:
            return cand, w.memory_fraction
        lower = p["rollout"]["max_memory_fraction"]
        if w.engine == "vllm" and 0 < lower < w.memory_fraction:
            if plan(m, cand, replace(w, memory_fraction=lower), hw, a, param_bytes)["fits"]:
                return cand, lower
    return None


# --------------------------------------------------------------------------------------------
# Where the model's shape comes from.

def resolve_hf_config(cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """The model's HF config and where it came from: inline (presets carry it), a local
    config.json, or the local Hugging Face cache. Never downloads."""
    if cfg.model.hf_config:
        return dict(cfg.model.hf_config), "model.hf_config"
    path = cfg.model.path
    if not path:
        raise ConfigError("no model to plan: set model.path (an HF directory or hub id) or model.hf_config")
    local = Path(path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text()), str(local)
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, local_files_only=True).to_dict(), "local Hugging Face cache"
    except Exception:  # not in the cache either: say how to give the shape
        raise ConfigError(f"cannot find the shape of model.path={path!r} without downloading: put its config.json "
                          f"at {local}, or set model.hf_config (the presets in configs/model/ do)") from None


def plan_run(cfg: RunConfig, gpus: int | None = None, a: Assumptions = Assumptions(),
             mean_seq_len: int | None = None):
    """(plan, where the shape came from, suggestion or None) for a loaded run config."""
    hf, source = resolve_hf_config(cfg)
    hw = parse_fits(cfg.fits)[1] if cfg.fits else H100
    gpus = job_gpus(cfg, gpus)
    cluster_preflight(cfg, gpus, hf, a.transformer_engine)  # the run's own checks, before any layout arithmetic
    m, lay = families.shape(hf), layout_from_config(cfg, gpus)
    check = preflight_check(cfg, hf, a.transformer_engine)
    w = replace(Workload.from_config(cfg), mean_seq_len=mean_seq_len)
    param_bytes = 4 if cfg.model.dtype == "fp32" else 2
    p = plan(m, lay, w, hw, a, param_bytes)
    return p, source, (None if p["fits"] else suggest(m, lay, w, hw, a, param_bytes, check))
