"""Run under torchrun (tests/integration/test_reducer_dist.py): the gloo reducer against the single-process
computation of the whole batch, an empty rank, malformed answers, and a failure on one rank.
With `--layout-only`: the check that labels and rewards do not depend on the world size, for every
size from 1 to the number of processes launched."""

import sys
import random
import time
from dataclasses import replace
from fractions import Fraction

import torch.distributed as dist

from tests.support.consensus import ExactClasses, synthetic_records  # noqa: E402

from harmony_mcore.config import AlgorithmConfig  # noqa: E402
from harmony_mcore.consensus.reducer import Record, Reducer, compute_batch  # noqa: E402
from harmony_mcore.consensus.strategies import strategy_from_config  # noqa: E402
from harmony_mcore.rewards import RewardOptions  # noqa: E402


def shard(records, rank, world, empty_rank=None):
    """Uneven contiguous shards; `empty_rank` gets nothing."""
    owners = [r for r in range(world) if r != empty_rank]
    cuts = [0] + [len(records) * (k + 1) * (k + 2) // (len(owners) * (len(owners) + 1)) for k in range(len(owners))]
    if rank not in owners:
        return 0, 0
    k = owners.index(rank)
    return cuts[k], cuts[k + 1]


def expected(records, algo):
    return compute_batch(records, equivalence=ExactClasses(), strategy=strategy_from_config(algo.consensus),
                         reward=algo.reward, options=RewardOptions.from_config(algo))


def check(records, algo, rank, world, empty_rank=None):
    """This rank's share through the reducer == the whole batch in one process, in reverse order
    (labels depend on the answers only, so the layout must not matter)."""
    lo, hi = shard(records, rank, world, empty_rank)
    red = Reducer(algo, equivalence=ExactClasses() if rank == 0 else None)
    rewards, shaping, metrics = red(records[lo:hi], step=100)
    want = expected(records[::-1], algo)
    want.rewards.reverse()
    want.shaping.reverse()
    assert rewards == want.rewards[lo:hi], (rank, rewards, want.rewards[lo:hi])
    assert shaping == want.shaping[lo:hi], (rank, shaping, want.shaping[lo:hi])
    for key, value in want.metrics.items():
        if not key.startswith("time/"):
            assert abs(metrics[key] - value) <= 1e-12 * max(1.0, abs(value)), (key, metrics[key], value)
    return metrics


def check_layout(rank, world, group):
    """The trainer's layout: rollouts ordered by (view, problem, sample), rank r of `group` (world
    ranks) reduces rows r, r + world, ... Many problems end in an exact tie, which a tie-break on
    arrival order at the reducing rank would settle differently for different world sizes. Rewards
    must equal the single-process computation of the batch in its own order and in a shuffled order."""
    pool = ["1", "2", "-3", "\\frac{1}{2}", "x+1", None]
    rnd = random.Random(5)
    records = [Record(f"q{p}", v, rnd.choice(pool)) for v in range(2) for p in range(40) for _ in range(4)]
    mine = list(range(rank, len(records), world))
    algo = AlgorithmConfig()
    red = Reducer(algo, group=group, equivalence=ExactClasses() if rank == 0 else None)
    rewards, _, metrics = red([records[i] for i in mine], step=100)
    want = expected(records, algo)
    assert rewards == [want.rewards[i] for i in mine], rank
    assert metrics["coverage"] == want.metrics["coverage"]
    order = list(range(len(records)))
    rnd.shuffle(order)
    again = expected([records[i] for i in order], algo)
    assert [again.rewards[order.index(i)] for i in range(len(records))] == want.rewards
    assert sum(map(_exact_tie, _by_problem(records))) >= 5  # the batch does exercise the tie-break


def _by_problem(records):
    views = {}
    for r in records:
        views.setdefault(r.problem_id, ([], []))[r.view].append(r.answer)
    return list(views.values())


def _exact_tie(views):
    """Whether two answers share the best harmonic score n0 n1 / (n0 + n1) and pooled count."""
    v0, v1 = views
    keys = sorted(((Fraction(v0.count(a) * v1.count(a), v0.count(a) + v1.count(a)), v0.count(a) + v1.count(a))
                   for a in set(v0) & set(v1) - {None}), reverse=True)
    return len(keys) > 1 and keys[0] == keys[1]


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if "--layout-only" in sys.argv:  # every world size from 1 to the launched one, as subgroups
        for size in range(1, world + 1):
            group = dist.new_group(list(range(size)), backend="gloo")  # collective: every rank calls it
            if rank < size:
                check_layout(rank, size, group)
        dist.barrier()
        if rank == 0:
            print("DIST_LAYOUT_OK")
        dist.destroy_process_group()
        return

    algo = AlgorithmConfig()  # harmonic-mean, format penalty 0.1, sharpness 0.1
    records = synthetic_records(n_problems=30, n=8, views=2, seed=7)
    for i, r in enumerate(records):
        r.format_score = (i % 4) / 3 if r.view else None
    check(records, algo, rank, world)
    with_gt = [replace(r, ground_truth=r.ground_truth or "0") for r in records]
    check(with_gt, AlgorithmConfig(reward="gt"), rank, world, empty_rank=1)
    algo.consensus.strategy = "cross"
    check(records, algo, rank, world, empty_rank=0)

    # one step at the paper's scale: 128 problems x 2 views x 16 samples, realistic answer strings
    big = synthetic_records(n_problems=128, n=16, views=2, seed=11)
    for r in big:
        if isinstance(r.answer, str):
            r.answer = r.answer + " \\frac{" + "x" * 20 + "}"
    dist.barrier()  # time the collectives, not the ranks' arrival
    t0 = time.perf_counter()
    metrics = check(big, AlgorithmConfig(), rank, world)
    if rank == 0:
        print(f"reducer {len(big)} records on {world} ranks: gather {metrics['time/gather_s'] * 1e3:.1f} ms, "
              f"reduce total {metrics['time/reduce_s'] * 1e3:.1f} ms, wall {(time.perf_counter() - t0) * 1e3:.1f} ms")

    # real math equivalence on rank 0, with answers that hang or blow up math-verify: the step
    # finishes, bounded by the per-call timeout, and the incidents are counted
    from harmony_mcore.answers import Equivalence

    eq = Equivalence("math", timeout_s=1.0, workers=1) if rank == 0 else None
    hostile = [Record("h", rank % 2, a) for a in ("12", "(10^{10})!", "9" * 100_000, "\\frac{24}{2}")]
    rewards, _, metrics = Reducer(AlgorithmConfig(), equivalence=eq)(hostile, step=0)
    # label 12 (= 24/2) in both views; half of each view matches it, so the sharpness penalty is 0
    assert rewards == [1.0, 0.0, 0.0, 1.0], rewards
    incidents = ("timeouts", "failures", "rejected_too_long", "rejected_huge")
    assert sum(metrics.get(f"equivalence/{k}", 0) for k in incidents) >= 2, metrics  # both reported
    if eq is not None:
        eq.close()

    # a bad record on the last rank fails every rank with the reason, instead of hanging them
    bad = [Record("x", 0, "1")] if rank != world - 1 else [Record("x", -3, "1")]
    try:
        Reducer(AlgorithmConfig(), equivalence=ExactClasses() if rank == 0 else None)(bad, step=0)
    except RuntimeError as e:
        assert "view must be an integer" in str(e), e
    else:
        raise AssertionError("the reducer accepted a record with view -3")
    dist.barrier()
    if rank == 0:
        print("DIST_REDUCER_OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
