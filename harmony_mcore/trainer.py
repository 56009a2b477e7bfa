"""The Self-Harmony loop: one SPMD program, every rank runs `train(cfg)` (docs/design.md, "One SPMD program").

    for each step:
        sync      push the policy's weights into the rollout engine (bridge)
        generate  n samples per problem for each view (rows split over rollout replicas), engine sleeps
        logprobs  old (and reference) log-probs of the whole batch with the Megatron policy
        reward    rank-0 reducer: answers -> equivalence classes -> consensus label -> rewards
        update    GRPO advantages per (view, problem), one optimizer step on the sum of the view losses
        log / evaluate / checkpoint

The trainer never knows which consensus strategy or reward it runs: both come from the registries
by name (harmony_mcore.consensus, harmony_mcore.rewards).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from harmony_mcore import run_guard
from harmony_mcore.algo.loss import rows_by_view, view_advantages
from harmony_mcore.algo.schedules import strategy_at
from harmony_mcore.config import ConfigError, RunConfig
from harmony_mcore.data.benchmarks import Problem
from harmony_mcore.dtypes import torch_dtype

TOY = "toy-arith"


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


@dataclass
class Task:
    """The problems and their prompt token ids per view ([view][problem])."""

    problems: list[Problem]
    prompts: list[list[list[int]]]
    markers: bool  # reframe views were asked for STRATEGY/REWRITTEN PROBLEM/SOLUTION markers


@dataclass
class Rollout:
    view: int
    problem: int  # index into Task.problems
    prompt: list[int]
    response: list[int]
    text: str
    logprobs: list[float]  # the engine's, at the sampling temperature
    truncated: bool


# ---- set-up -------------------------------------------------------------------------------------

def resolve_model(cfg: RunConfig, log=print) -> tuple[Path, dict]:
    """(HF-style directory with config.json + tokenizer, hf_config) of the model to train.

    The toy model is pretrained and cached on first use; a Megatron checkpoint keeps its HF files
    in an `hf/` sub-directory (harmony convert). Checks model.hf_config against the files.
    """
    from harmony_mcore.bridge.dist_ckpt import CheckpointError, CheckpointReader, is_dist_checkpoint

    if cfg.data.benchmark == TOY and cfg.model.path is None:
        from harmony_mcore import toy

        t = cfg.toy
        path = toy.pretrained_model_dir(cfg.model.hf_config, steps=t.pretrain_steps, lr=t.pretrain_lr,
                                        batch=t.pretrain_batch, cache_dir=t.cache_dir, log=log)
        return path, json.loads((path / "config.json").read_text())
    if cfg.model.path is None:
        raise ConfigError("model.path is not set: point it at an HF model directory or a converted checkpoint "
                          "(the tokenizer comes from there)")
    path = Path(cfg.model.path).expanduser()
    hf_dir = path / "hf" if is_dist_checkpoint(path) else path
    if hf_dir != path:
        try:
            damaged = CheckpointReader(path).missing_data()  # damaged or unsafe: refused before any rank starts
        except CheckpointError as e:
            raise ConfigError(f"model.path={path}: {e}") from None
        if damaged:
            raise ConfigError(f"model.path={path}: incomplete checkpoint: {'; '.join(damaged[:3])}")
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"model.path={path}: no config.json there (nor in {path}/hf): download the model or "
                          "convert it with `harmony convert hf-to-mcore`")
    found = json.loads((hf_dir / "config.json").read_text())
    expected = cfg.model.hf_config or {}
    keys = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size")
    wrong = [k for k in keys if k in expected and k in found and expected[k] != found[k]]
    if wrong:
        raise ConfigError(f"model.path={path} does not match model.hf_config on {wrong}: pick the model group "
                          "that matches the files (or set model.hf_config=null)")
    return hf_dir, found


def load_tokenizer(cfg: RunConfig, hf_dir: Path):
    if cfg.data.benchmark == TOY:
        from harmony_mcore import toy

        return toy.build_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


def build_task(cfg: RunConfig, tokenizer, log=print) -> Task:
    K = 1 if cfg.data.views == "solver-only" else cfg.data.num_views
    if cfg.data.benchmark == TOY:
        from harmony_mcore import toy

        problems = toy.make_problems(cfg.toy.num_problems, cfg.data.seed)[: cfg.data.limit]
        texts = [[toy.solver_prompt(p) for p in problems]] + [[toy.reframe_prompt(p) for p in problems]] * (K - 1)
        prompts = [[tokenizer.encode(t, add_special_tokens=False) for t in view] for view in texts]
        return Task([Problem(f"toy-{p.id}", p.question, p.answer, TOY) for p in problems], prompts, True)
    from harmony_mcore.data.benchmarks import load_benchmark
    from harmony_mcore.data.prompts import build_prompts

    problems = load_benchmark(cfg.data.benchmark, cfg.data.path, cfg.data.limit)
    ps = build_prompts(problems, tokenizer, cfg.data.views, K, cfg.rollout.max_prompt_tokens, cfg.data.prompts)
    if ps.overlong:
        log(ps.report())
    if not ps.problems:
        raise ConfigError(f"no problem of {cfg.data.benchmark} fits rollout.max_prompt_tokens="
                          f"{cfg.rollout.max_prompt_tokens}: raise it")
    return Task(ps.problems, ps.token_ids, cfg.data.views == "reframe")


def total_steps(cfg: RunConfig, num_problems: int) -> int:
    return cfg.steps or cfg.data.epochs * steps_per_epoch(cfg, num_problems)


def steps_per_epoch(cfg: RunConfig, num_problems: int) -> int:
    return max(1, num_problems // cfg.data.problems_per_step)  # a partial last batch is dropped


def batch_indices(cfg: RunConfig, num_problems: int, step: int) -> list[int]:
    """The problems of `step`: a fresh permutation per epoch, a pure function of (data.seed, step),
    so the data position after a resume is just the step counter."""
    spe = steps_per_epoch(cfg, num_problems)
    epoch, offset = divmod(step, spe)
    order = list(range(num_problems))
    random.Random(cfg.data.seed * 1_000_003 + epoch).shuffle(order)
    size = min(cfg.data.problems_per_step, num_problems)
    return order[offset * size:(offset + 1) * size]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


def step_seed(seed: int, step: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{salt}".encode()).digest()[:7], "big")


def checkpoint_root(cfg: RunConfig) -> Path:
    return Path(cfg.checkpoint.dir or Path(cfg.output_dir) / "checkpoints").expanduser()


# ---- the run ------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: RunConfig):
        from harmony_mcore.bridge.export import WeightExporter
        from harmony_mcore.consensus.reducer import Reducer
        from harmony_mcore.metrics import RunLogger
        from harmony_mcore.parallel import init_distributed, launch_env
        from harmony_mcore.policy import Policy
        from harmony_mcore.preflight import preflight
        from harmony_mcore.rollout import create_engine, engine_kind

        self.cfg = cfg
        self.out = Path(cfg.output_dir).expanduser()
        launched = launch_env()
        self.rank = launched.rank
        self.stop_requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):  # preemption, Ctrl-C: finish the step,
            signal.signal(sig, self._on_signal)                        # checkpoint, exit
        run_guard.watch_parent(self._on_launcher_gone)
        self._locks = run_guard.lock_rank(self.out, self.rank)  # kept for the life of the rank
        self.hf_dir, hf_config = resolve_model(cfg, log=self._log)
        preflight(cfg, launched.world_size, hf_config)  # before any process group exists
        self.engine_kind = engine_kind(cfg.rollout)  # vLLM selected but not installed: say so now
        init_distributed(cfg.parallel, seed=cfg.seed)
        self.world = dist.get_world_size()
        self.gloo = dist.new_group(backend="gloo")  # object collectives stay on the host
        self.log = RunLogger(cfg, self.out, enabled=self.rank == 0)
        self.tokenizer = load_tokenizer(cfg, self.hf_dir)
        self.task = build_task(cfg, self.tokenizer, log=self._log)
        self.K = len(self.task.prompts)
        self.steps = total_steps(cfg, len(self.task.problems))

        self.policy = Policy(hf_config, cfg.parallel, cfg.algorithm, dtype=cfg.model.dtype, total_steps=self.steps,
                             recompute=cfg.model.recompute, reference=cfg.algorithm.kl_coef > 0)
        self._load_initial_weights()
        self.engine = create_engine(cfg.rollout, hf_config=hf_config, tokenizer=self.tokenizer,
                                    model_path=str(self.hf_dir), dtype=cfg.model.dtype, seed=cfg.seed, log=self._log)
        self.exporter = WeightExporter(self.policy.model, hf_config, rollout_dtype=torch_dtype(cfg.model.dtype),
                                       bucket_bytes=cfg.rollout.bucket_mb << 20)
        self.reducer = Reducer(cfg.algorithm, group=self.gloo, num_views=self.K)
        # Rollout replicas: vLLM ranks of one rollout-TP group must issue identical requests.
        self.rollout_tp = cfg.rollout.tp if self.engine_kind == "vllm" else 1
        self.replicas, self.replica = self.world // self.rollout_tp, self.rank // self.rollout_tp
        self.sync_checked = False

    # ---- helpers --------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[harmony] {msg}", flush=True)

    def _on_signal(self, signum, frame) -> None:
        self._log(f"received {signal.Signals(signum).name}: checkpointing after this step, then exiting")
        self.stop_requested = True

    def _on_launcher_gone(self) -> None:
        self._log(f"the launcher is gone: checkpointing after this step, exiting within {run_guard.ORPHAN_GRACE_S:.0f} s")
        self.stop_requested = True

    def _should_stop(self) -> bool:
        """Every rank agrees (a signal may reach only some). slurm/train.sbatch asks by creating
        $HARMONY_STOP_FILE; <output_dir>/STOP works anywhere."""
        files = [self.out / "STOP"] + ([Path(os.environ["HARMONY_STOP_FILE"])] if os.environ.get("HARMONY_STOP_FILE") else [])
        flag = torch.tensor([float(self.stop_requested or any(f.exists() for f in files))])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.gloo)
        return bool(flag.item())

    def _gather(self, local: list) -> list:
        """Concatenate every rollout replica's list, in replica order (one copy per replica)."""
        parts: list = [None] * self.world
        dist.all_gather_object(parts, local, group=self.gloo)
        return [x for r, part in enumerate(parts) if r % self.rollout_tp == 0 for x in part]

    def _load_initial_weights(self) -> None:
        """The model's weights into the policy (converted from HF once, by rank 0), then the reference."""
        from harmony_mcore.bridge.dist_ckpt import is_dist_checkpoint, load_model_weights

        src = Path(self.cfg.model.path).expanduser() if self.cfg.model.path else None
        if src is None or not is_dist_checkpoint(src):
            src = self.out / "initial_mcore"  # keeps the HF config + tokenizer in hf/ (for mcore-to-hf)
            if self.rank == 0 and not is_dist_checkpoint(src):
                from harmony_mcore.bridge.hf_to_mcore import convert

                convert(self.hf_dir, src, overwrite=True, log=self._log)
        dist.barrier(group=self.gloo)
        load_model_weights(self.policy.modules, src)
        self.policy.sync_reference()

    # ---- the phases -----------------------------------------------------------------------------
    def sync(self, step: int) -> dict[str, float]:
        """Push the policy's weights into the engine; on the first sync and every
        rollout.logprob_check_every steps, check that the engine scores like the policy (SyncError if not)."""
        from harmony_mcore.bridge.export import check_sync, policy_scorer

        ro = self.cfg.rollout
        metrics = self.exporter.sync(self.engine)
        if ro.logprob_check_every and (not self.sync_checked or step % ro.logprob_check_every == 0):
            seqs = [p for view in self.task.prompts for p in view][:ro.logprob_check_sequences]
            metrics["sync/logprob_check_diff"] = check_sync(self.engine, policy_scorer(self.policy), seqs,
                                                            ro.logprob_check_tolerance)
            self.sync_checked = True
        return metrics

    def generate_shared(self, requests: list, params) -> list:
        """Generate `requests`, each rollout replica taking a share; every rank gets all results, in order.
        Request i is seeded by params.request_seeds[i] (default i), so results do not depend on the split."""
        seeds = list(params.request_seeds) if params.request_seeds is not None else list(range(len(requests)))
        mine = [i for i in range(len(requests)) if i % self.replicas == self.replica]
        results = self.engine.generate([requests[i] for i in mine],
                                       replace(params, request_seeds=[seeds[i] for i in mine])) if mine else []
        by_index = dict(self._gather(list(zip(mine, results))))
        return [by_index[i] for i in range(len(requests))]

    def generate(self, rows: list[tuple[int, int]], params) -> list[Rollout]:
        """Sample every (view, problem) row of the task, in row order."""
        P = len(self.task.problems)
        results = self.generate_shared([self.task.prompts[v][p] for v, p in rows],
                                       replace(params, request_seeds=[v * P + p for v, p in rows]))
        return [Rollout(v, p, list(res.prompt_ids), list(s.token_ids), s.text, list(s.logprobs),
                        s.finish_reason == "length")
                for (v, p), res in zip(rows, results) for s in res.samples]

    def view_tensors(self, rollouts: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """input_ids, attention_mask, response_mask [B, P+R] (left-padded prompts, right-padded
        responses) and P, the column where responses start."""
        P = max(len(r.prompt) for r in rollouts)
        R = max(max(len(r.response) for r in rollouts), 1)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rollouts), P + R), pad, dtype=torch.long)
        attn = torch.zeros(len(rollouts), P + R, dtype=torch.long)
        resp = torch.zeros(len(rollouts), P + R, dtype=torch.float32)
        for i, r in enumerate(rollouts):
            seq = r.prompt + r.response
            ids[i, P - len(r.prompt):P + len(r.response)] = torch.tensor(seq)
            attn[i, P - len(r.prompt):P + len(r.response)] = 1
            resp[i, P:P + len(r.response)] = 1
        return ids, attn, resp, P

    def rewards(self, rollouts: list[Rollout], values: list[float | None], step: int) -> tuple[list, list, dict]:
        """Rank-0 reducer over the batch (each rank hands in a share); rewards and advantage offsets
        (shaping) in rollout order on every rank."""
        from harmony_mcore.consensus.reducer import Record

        problems, mine = self.task.problems, list(range(self.rank, len(rollouts), self.world))
        records = []
        for i in mine:
            r, p = rollouts[i], problems[rollouts[i].problem]
            records.append(Record.from_response(p.id, r.view, r.text, p.answer,
                                                choices=p.num_options if p.is_choice else None,
                                                markers=self.task.markers, value=values[i]))
        local_rewards, local_shaping, metrics = self.reducer(records, step)
        parts: list = [None] * self.world
        dist.all_gather_object(parts, list(zip(mine, local_rewards, local_shaping)), group=self.gloo)
        rewards, shaping = [0.0] * len(rollouts), [0.0] * len(rollouts)
        for part in parts:
            for i, value, offset in part:
                rewards[i], shaping[i] = value, offset
        return rewards, shaping, metrics

    def step(self, step: int) -> dict[str, Any]:
        from harmony_mcore.policy import ViewBatch
        from harmony_mcore.rewards import get_reward, view_has_policy_gradient
        from harmony_mcore.rollout import SamplingParams

        cfg, ro, timer = self.cfg, self.cfg.rollout, self.log.timer()
        batch = batch_indices(cfg, len(self.task.problems), step)
        rows = [(v, p) for v in range(self.K) for p in batch]

        with timer("sync"):
            sync = self.sync(step)
        with timer("generate"):
            params = SamplingParams(n=ro.n, temperature=ro.temperature, top_p=ro.top_p,
                                    max_tokens=ro.max_response_tokens, seed=step_seed(cfg.seed, step, "rollout"))
            rollouts = self.generate(rows, params)
            self.engine.sleep(ro.sleep_level)

        per_view = rows_by_view([r.view for r in rollouts], self.K)
        token_stat = get_reward(cfg.algorithm.reward).token_stat  # a statistic the reward needs from the policy
        tensors, old, ref, values, diffs = [], [], [], [None] * len(rollouts), []
        with timer("logprobs"):
            for idx in per_view:
                ids, attn, resp, P = self.view_tensors([rollouts[i] for i in idx])
                logp, stat = self.policy.logprobs(ids, attn, temperature=ro.temperature,
                                                  stat=token_stat.name if token_stat else None)
                tensors.append((ids, attn, resp))
                old.append(logp)
                ref.append(self.policy.logprobs(ids, attn, temperature=ro.temperature, reference=True)[0]
                           if self.policy.reference is not None else None)
                for row, i in enumerate(idx):
                    n = len(rollouts[i].response)
                    if n:
                        diffs.append((logp[row, P:P + n] - torch.tensor(rollouts[i].logprobs)).abs().max().item())
                    if stat is not None:  # the response's mean token statistic, signed as the reward wants
                        mean = float((stat[row] * resp[row]).sum() / resp[row].sum().clamp(min=1))
                        values[i] = token_stat.sign * mean

        with timer("reward"):
            rewards, shaping, reward_metrics = self.rewards(rollouts, values, step)
            adv = view_advantages([r.view for r in rollouts], [r.problem for r in rollouts], rewards, shaping,
                                  num_views=self.K, normalize_std=cfg.algorithm.normalize_adv_std)

        with timer("update"):
            views = [ViewBatch(*tensors[v], old_logp=old[v], advantages=adv[v], ref_logp=ref[v],
                               policy_gradient=view_has_policy_gradient(v, self.reducer.options))
                     for v in range(self.K)]
            train = self.policy.train_step(views, step, temperature=ro.temperature)

        c = cfg.algorithm.consensus
        lengths = [len(r.response) for r in rollouts]
        metrics = {"step": step + 1, "strategy": strategy_at(step, strategy=c.strategy,
                                                             warmup_strategy=c.warmup_strategy,
                                                             warmup_steps=c.warmup_steps),
                   **{f"reward/{k}": v for k, v in reward_metrics.items()}, **train, **sync,
                   "rollout/logprob_diff_max": max(diffs, default=0.0),
                   "rollout/truncated": sum(r.truncated for r in rollouts) / len(rollouts),
                   # fingerprints of what was sampled and rewarded (resume determinism is tested on them)
                   "rollouts_digest": _digest([r.response for r in rollouts]), "rewards_digest": _digest(rewards),
                   **timer.metrics()}
        for v, idx in enumerate(per_view):
            metrics[f"length/view{v}"] = sum(lengths[i] for i in idx) / len(idx)
        tokens = sum(lengths) + sum(len(r.prompt) for r in rollouts)
        metrics["throughput/generate_tokens_per_s"] = sum(lengths) / max(metrics["time/generate_s"], 1e-9)
        metrics["throughput/train_tokens_per_s"] = tokens / max(metrics["time/update_s"], 1e-9)
        self.log.add_mfu(metrics, tokens, self.policy.hf_config, self.world)
        return metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """Solver-view accuracy (avg@n, pass@k, maj@k; strict and math scorers) on `eval.benchmarks`
        (default: the training benchmark) with harmony_mcore.evaluation; the rollout replicas share
        the generation."""
        if self.cfg.data.benchmark == TOY:
            return self._evaluate_task(step)
        from harmony_mcore.evaluation import eval_suites, evaluate, flat_metrics, settings_from_config

        cfg = self.cfg
        settings = replace(settings_from_config(cfg.eval, cfg.rollout, cfg.algorithm.consensus),
                           seed=step_seed(cfg.seed, step, "eval"), prompts=cfg.data.prompts)
        self.sync(step)
        shared = SimpleNamespace(generate=self.generate_shared)  # the engine protocol's generate, split
        report = evaluate(shared, self.tokenizer, eval_suites(cfg.eval, cfg.data), settings)
        self.engine.sleep(cfg.rollout.sleep_level)
        return flat_metrics(report)

    def _evaluate_task(self, step: int) -> dict[str, float]:
        from harmony_mcore.answers import Equivalence, extract_boxed
        from harmony_mcore.evaluation import score_problems, summarise
        from harmony_mcore.rollout import SamplingParams

        e, ro = self.cfg.eval, self.cfg.rollout
        problems = self.task.problems[: e.limit]
        params = SamplingParams(n=1 if e.greedy else e.n, temperature=e.temperature, top_p=e.top_p,
                                greedy=e.greedy, max_tokens=ro.max_response_tokens,
                                seed=step_seed(self.cfg.seed, step, "eval"))
        self.sync(step)
        rollouts = self.generate([(0, p) for p in range(len(problems))], params)
        self.engine.sleep(ro.sleep_level)
        out: list = [None]
        if self.rank == 0:
            n = params.n
            answers = [[extract_boxed(r.text) for r in rollouts[i * n:(i + 1) * n]] for i in range(len(problems))]
            with Equivalence("math", timeout_s=self.cfg.algorithm.consensus.timeout_s) as eq:
                scored = score_problems(problems, answers, eq)
            name = self.cfg.data.benchmark
            out = [{f"eval/{name}/{scorer}/{k}": v for scorer in scored
                    for k, v in summarise(scored[scorer], sorted({1, n})).items()}]
        dist.broadcast_object_list(out, src=0, group=self.gloo)
        return out[0]

    # ---- the driver -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from harmony_mcore import checkpoint

        from harmony_mcore.bridge.files import copy_side_files

        cfg = self.cfg
        ckpt_dir = checkpoint_root(cfg)
        if self.rank == 0 and not (ckpt_dir / "hf" / "config.json").is_file():
            copy_side_files(self.hf_dir, ckpt_dir / "hf")  # the config `harmony convert mcore-to-hf` exports with
        state = checkpoint.resume(cfg.checkpoint.resume, ckpt_dir, self.policy, self.gloo, log=self._log)
        start, history, nonfinite = state.get("step", 0), state.get("history", []), state.get("nonfinite", 0)
        self.log.start(history, resumed_from=start if state else None, total=self.steps)
        if start == 0:
            self.log.record(self.evaluate(0) | {"step": 0})
        step = start
        while step < self.steps:
            metrics = self.step(step)
            step += 1
            nonfinite = nonfinite + 1 if metrics["skipped"] else 0
            if nonfinite >= cfg.algorithm.max_nonfinite_steps:
                raise NonFiniteError(f"{nonfinite} optimizer steps in a row had a non-finite loss or gradient norm "
                                     f"(last grad_norm={metrics['grad_norm']}): lower algorithm.lr, check the data, "
                                     "or raise algorithm.max_nonfinite_steps")
            if cfg.eval.every and step % cfg.eval.every == 0 or step == self.steps:
                metrics |= self.evaluate(step)
            self.log.record(metrics)
            stop = self._should_stop()
            if stop or step == self.steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                checkpoint.save(ckpt_dir, step, self.policy, {"step": step, "nonfinite": nonfinite,
                                                              "history": self.log.history},
                                keep_last=cfg.checkpoint.keep_last, group=self.gloo)
            if stop:
                self._log(f"stopped at step {step}: resume with the same command")
                break
        return self.log.finish()


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the configured training in this process, one rank of the SPMD program."""
    from harmony_mcore.parallel import destroy_distributed

    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.reducer.close()
        destroy_distributed()
