"""The rank-0 reducer: answers from every rank -> equivalence classes -> consensus -> rewards.

`compute_batch` is the single-process computation (also used by `harmony vote`): it groups rows by
their OWN problem id (the reference paired rows of the two views by position after reordering them
independently, so most reframe rewards were checked against another problem's label), votes per
problem, and returns a reward per row in input order plus metrics. Labels and rewards are a pure
function of each problem's answers: classes are numbered in a fixed order of their canonical
strings (`canonical_classes`), which is what the consensus tie-break (smallest id) follows, so the
row order, the number of ranks and the process never change a label. `Reducer` runs it on one
rank: gather every rank's records there, compute, scatter each rank's results back in its local
order.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harmony_mcore.consensus.strategies import Views, Vote, get_strategy, strategy_from_config
from harmony_mcore.rewards import (
    ProblemRollouts, RewardOptions, RewardSource, get_reward, problem_rewards, problem_shaping,
)
from harmony_mcore.rewards.sources import sharpness_per_view


@dataclass
class Record:
    """One response, as the rank that generated it knows it."""

    problem_id: str | int
    view: int  # 0 = solver, 1.. = reframe views
    answer: str | None  # extracted answer (None = no answer)
    ground_truth: str | None = None  # monitoring only (and the gt baseline)
    format_score: float | None = None  # reframe views: rewards.format_score(response), computed locally
    value: float | None = None  # intuitor/rent: the signed mean of the reward's token_stat, computed locally

    @classmethod
    def from_response(cls, problem_id: str | int, view: int, response: str, ground_truth: str | None = None,
                      *, choices: int | None = None, markers: bool = True, value: float | None = None) -> Record:
        """A record from a response text, built on the rank that generated it.

        `choices`: number of options of a multiple-choice benchmark (the boxed letter is the
        answer). `markers`: the reframe views were asked for STRATEGY/REWRITTEN PROBLEM/SOLUTION
        (dynamic reframe-and-solve; False for static reframes), so they get a format score.
        """
        from harmony_mcore.answers import extract_boxed, extract_choice
        from harmony_mcore.rewards import format_score

        answer = extract_boxed(response)
        if choices is not None:
            answer = extract_choice(answer, choices)
        return cls(problem_id, view, answer, ground_truth,
                   format_score(response) if view > 0 and markers else None, value)


@dataclass
class ProblemResult:
    problem_id: str | int
    vote: Vote
    label_answers: tuple[str | None, ...]  # per view: the most common answer string of its label class
    ground_truth: str | None
    label_correct: tuple[bool | None, ...]  # per view; None without ground truth


@dataclass
class BatchResult:
    rewards: list[float]  # one per input record, in input order
    shaping: list[float]  # advantage offset per record (format penalty), added after GRPO normalisation
    answers: list[str | None]  # the answer each reward was computed from (malformed -> None)
    problems: list[ProblemResult]  # in order of first appearance
    metrics: dict[str, float] = field(default_factory=dict)


def _check_record(i: int, r: Record) -> None:
    if not isinstance(r.problem_id, (str, int)) or isinstance(r.problem_id, bool):
        raise ValueError(f"record {i}: problem_id must be a string or an integer, got {r.problem_id!r}")
    if not isinstance(r.view, int) or isinstance(r.view, bool) or r.view < 0:
        raise ValueError(f"record {i} (problem {r.problem_id!r}): view must be an integer >= 0 "
                         f"(0 = solver), got {r.view!r}")


def _as_answer(a) -> str | None:
    return a if isinstance(a, str) or a is None else None


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def canonical_classes(answers: Sequence[str | None], classes: Sequence[int | None], key) -> list[int | None]:
    """One problem's class ids renumbered in a fixed order of the classes' canonical strings.

    A class's canonical string is the smallest `key(answer)` among its answers (the equivalence's
    normal form), so the numbering depends on the set of answers only, not on their order. Classes
    are ordered by a digest of that string, not by the string itself: a tie is then settled the
    same way every time for the same answers, without favouring a kind of answer (as string
    order would favour, e.g., negative numbers over positive ones).
    """
    canon: dict[int, str] = {}
    for a, c in zip(answers, classes):
        if c is not None:
            k = key(a)
            canon[c] = k if c not in canon else min(canon[c], k)
    order = sorted(canon, key=lambda c: (_digest(canon[c]), canon[c]))
    rank = {c: i for i, c in enumerate(order)}
    return [None if c is None else rank[c] for c in classes]


def _representative(answers: list[str | None], classes: list[int | None], label: int | None) -> int | None:
    """Row index (into `answers`) of the most common answer string of class `label` (ties: the
    smallest string, so the choice does not depend on row order)."""
    if label is None:
        return None
    members = [i for i, c in enumerate(classes) if c == label]
    counts = Counter(answers[i].strip() for i in members)
    best = min(counts, key=lambda a: (-counts[a], a))
    return next(i for i in members if answers[i].strip() == best)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _group(records: Sequence[Record], K: int) -> tuple[list, list[list[list[int]]], list[str | None]]:
    """Problem ids in order of first appearance, their row indices per view, their ground truth."""
    groups: dict[str | int, list[list[int]]] = {}
    for i, r in enumerate(records):
        if r.view >= K:
            raise ValueError(f"record {i} (problem {r.problem_id!r}) has view {r.view} but num_views={K}")
        groups.setdefault(r.problem_id, [[] for _ in range(K)])[r.view].append(i)
    gts: list[str | None] = []
    for p, views in groups.items():
        given = {records[i].ground_truth for view in views for i in view} - {None}
        if len(given) > 1:
            raise ValueError(f"problem {p!r}: its rows disagree on ground_truth ({sorted(map(str, given))})")
        gts.append(str(given.pop()) if given else None)
    return list(groups), list(groups.values()), gts


def _stats(equivalence) -> dict:
    stats = getattr(equivalence, "stats", None)
    return stats.as_dict() if hasattr(stats, "as_dict") else dict(stats or {})


def compute_batch(records: Sequence[Record], *, equivalence, strategy: Callable[[Views], Vote],
                  reward: str | RewardSource = "pseudo-label", options: RewardOptions | None = None,
                  num_views: int | None = None, reward_equivalence=None) -> BatchResult:
    """Rewards for every record and per-problem labels, in one process.

    `equivalence` needs `classes_batch(list of answer lists) -> list of class-id lists` (ids by
    first appearance, None for no answer) and `stats` (see harmony_mcore.answers.Equivalence).
    `reward_equivalence` (default: the same) decides which answers match a label when rewarding;
    a looser one than the voting equivalence reproduces the reference code (exact-string votes,
    looser rewards). `num_views` defaults to 1 + the largest view present; a problem missing a
    view has N_k = 0.
    """
    source = get_reward(reward) if isinstance(reward, str) else reward
    options = options or RewardOptions()
    for i, r in enumerate(records):
        _check_record(i, r)
    answers = [_as_answer(r.answer) for r in records]
    malformed = sum(1 for r, a in zip(records, answers) if a is None and r.answer is not None)
    K = num_views or (1 + max((r.view for r in records), default=0))
    pids, groups, gts = _group(records, K)
    rows = [[i for view in views for i in view] for views in groups]  # per problem, view-major
    texts = [[answers[i] for i in rs] for rs in rows]

    def by_view(j: int, xs: Sequence) -> list[list]:
        cuts = [0]
        for view in groups[j]:
            cuts.append(cuts[-1] + len(view))
        return [list(xs[cuts[k]:cuts[k + 1]]) for k in range(K)]

    t0 = time.perf_counter()
    key = getattr(equivalence, "key", None) or str.strip
    classes = [canonical_classes(t, c, key) for t, c in zip(texts, equivalence.classes_batch(texts))]
    with_gt = [j for j, g in enumerate(gts) if g is not None]
    gt_classes = equivalence.classes_batch([[gts[j]] + texts[j] for j in with_gt])
    correct = {j: [g[0] is not None and c == g[0] for c in g[1:]] for j, g in zip(with_gt, gt_classes)}
    t1 = time.perf_counter()
    votes = [strategy(by_view(j, classes[j])) for j in range(len(pids))]
    reps = [[_representative(texts[j], classes[j], a) for a in vote.labels] for j, vote in enumerate(votes)]
    t2 = time.perf_counter()

    # What the rewards compare: each response's class and its view's label, under the reward equivalence.
    reward_votes, reward_classes = votes, classes
    if reward_equivalence is not None:
        rc = reward_equivalence.classes_batch([[None if r is None else texts[j][r] for r in reps[j]] + texts[j]
                                               for j in range(len(pids))])
        reward_classes = [c[K:] for c in rc]
        reward_votes = [Vote(tuple(c[:K]), v.scores, v.counts) for c, v in zip(rc, votes)]
    t3 = time.perf_counter()

    rewards = [0.0] * len(records)
    shaping = [0.0] * len(records)
    problems: list[ProblemResult] = []
    m: dict[str, list[float]] = {}

    def log(key: str, value: float) -> None:
        m.setdefault(key, []).append(float(value))

    has_format = any(r.format_score is not None for r in records)
    has_value = any(r.value is not None for r in records)
    per_view_self = get_strategy("self")
    for j, (p, rs, vote) in enumerate(zip(pids, rows, votes)):
        ok = correct.get(j)
        rollouts = ProblemRollouts(
            classes=by_view(j, reward_classes[j]), gt_correct=None if ok is None else by_view(j, ok),
            format_scores=by_view(j, [records[i].format_score for i in rs]) if has_format else None,
            values=by_view(j, [records[i].value for i in rs]) if has_value else None)
        flat = [x for view in problem_rewards(rollouts, reward_votes[j], source, options) for x in view]
        offsets = [x for view in problem_shaping(rollouts, source, options) for x in view]
        for i, r, o in zip(rs, flat, offsets):
            rewards[i], shaping[i] = r, o
        label_correct = tuple(None if ok is None else (rep is not None and ok[rep]) for rep in reps[j])
        problems.append(ProblemResult(p, vote, tuple(None if rep is None else texts[j][rep].strip()
                                                      for rep in reps[j]), gts[j], label_correct))

        log("coverage", vote.labels[0] is not None)
        if ok is not None:
            for k, hit in enumerate(label_correct):
                log("label_accuracy" if k == 0 else f"label_accuracy/view{k}", hit)
            log("answer_upper_bound", any(ok))
        if K > 1:
            majors = per_view_self(by_view(j, classes[j])).labels
            log("view_agreement", majors[0] is not None and len(set(majors)) == 1)
        for k, pen in enumerate(sharpness_per_view(rollouts, reward_votes[j])):
            log(f"sharpness/view{k}", pen)
        for pos, i in enumerate(rs):
            k = records[i].view
            log(f"reward/view{k}", rewards[i])
            log(f"answered/view{k}", classes[j][pos] is not None)
            if ok is not None:
                log(f"accuracy/view{k}", ok[pos])
            if k > 0 and records[i].format_score is not None:
                log(f"format_score/view{k}", records[i].format_score)
    t4 = time.perf_counter()

    metrics = {key: _mean(vals) for key, vals in m.items()}
    metrics.update({"problems": len(pids), "responses": len(records), "malformed_answers": malformed,
                    "time/equivalence_s": (t1 - t0) + (t3 - t2), "time/consensus_s": (t2 - t1) + (t4 - t3)})
    metrics.update({f"equivalence/{k}": v for k, v in _stats(equivalence).items()})
    if reward_equivalence is not None and reward_equivalence is not equivalence:
        metrics.update({f"reward_equivalence/{k}": v for k, v in _stats(reward_equivalence).items()})
    return BatchResult(rewards, shaping, answers, problems, metrics)


def _to_wire(r: Record) -> tuple:
    return (r.problem_id, r.view, r.answer, r.ground_truth, r.format_score, r.value)


class Reducer:
    """Gathers records to one rank, computes rewards there, scatters them back.

    The equivalence worker processes live on the reducing rank only, started on first use. Pass a
    gloo group (e.g. `dist.new_group(backend="gloo")`) so object collectives stay on the host.
    A failure on the reducing rank is sent to every rank and raised there, so no rank waits forever.
    """

    def __init__(self, algo, *, group=None, equivalence=None, reward_equivalence=None,
                 num_views: int | None = None):
        self.algo = algo
        self.group = group
        self.options = RewardOptions.from_config(algo)
        self.num_views = num_views
        self._equivalence = equivalence
        self._reward_equivalence = reward_equivalence

    def _make_equivalence(self, mode: str):
        from harmony_mcore.answers import Equivalence

        c = self.algo.consensus
        return Equivalence(mode, timeout_s=c.timeout_s, workers=c.workers)

    @property
    def equivalence(self):
        if self._equivalence is None:
            self._equivalence = self._make_equivalence(self.algo.consensus.match)
        return self._equivalence

    @property
    def reward_equivalence(self):
        """None when rewards use the voting equivalence (the default)."""
        c = self.algo.consensus
        if self._reward_equivalence is None and c.reward_match not in (None, c.match):
            self._reward_equivalence = self._make_equivalence(c.reward_match)
        return self._reward_equivalence

    def close(self) -> None:
        """Stop the equivalence worker processes (they are also stopped at exit)."""
        for eq in (self._equivalence, self._reward_equivalence):
            if eq is not None and hasattr(eq, "close"):
                eq.close()

    def compute(self, records: Sequence[Record], step: int) -> BatchResult:
        from harmony_mcore.algo.schedules import strategy_at

        c = self.algo.consensus
        name = strategy_at(step, strategy=c.strategy, warmup_strategy=c.warmup_strategy,
                           warmup_steps=c.warmup_steps)
        return compute_batch(records, equivalence=self.equivalence, strategy=strategy_from_config(c, name),
                             reward=self.algo.reward, options=self.options, num_views=self.num_views,
                             reward_equivalence=self.reward_equivalence)

    def __call__(self, records: Sequence[Record], step: int) -> tuple[list[float], list[float], dict[str, float]]:
        """Rewards and advantage offsets (BatchResult.shaping) for this rank's records, in their
        order, and the batch metrics (on every rank)."""
        import torch.distributed as dist

        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        root = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        t0 = time.perf_counter()
        gathered = [None] * world if rank == 0 else None
        dist.gather_object([_to_wire(r) for r in records], gathered, dst=root, group=self.group)
        t1 = time.perf_counter()
        if rank == 0:
            try:
                flat = [Record(*row) for part in gathered for row in part]
                result = self.compute(flat, step)
                metrics = {**result.metrics, "time/gather_s": t1 - t0}
                out, start = [], 0
                for part in gathered:
                    out.append(("ok", (result.rewards[start:start + len(part)],
                                       result.shaping[start:start + len(part)]), metrics))
                    start += len(part)
            except Exception as e:  # noqa: BLE001 - every rank must learn about it, not only this one
                out = [("error", f"{type(e).__name__}: {e}", None)] * world
        received = [None]
        dist.scatter_object_list(received, out if rank == 0 else None, src=root, group=self.group)
        status, payload, metrics = received[0]
        if status == "error":
            raise RuntimeError(f"consensus reducer failed on rank {root}: {payload}")
        rewards, shaping = payload
        return rewards, shaping, {**metrics, "time/reduce_s": time.perf_counter() - t0}
