"""Reducer collectives: gather to rank 0 + scatter back (what `Reducer` does) against a named
baseline measured in the same run, `all_gather_object` of every record to every rank.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=4 benchmarks/reducer_bench.py [--problems 128]

Equivalence runs in exact mode so that the numbers are the collectives and the bookkeeping
(benchmarks/consensus_bench.py measures the equivalence itself).
"""

import argparse
import pickle
import random
import statistics
import time

import torch.distributed as dist

from harmony_mcore.answers import Equivalence
from harmony_mcore.config import AlgorithmConfig
from harmony_mcore.consensus.reducer import Record, Reducer, _to_wire


def local_records(problems: int, samples: int, rank: int, world: int) -> list[Record]:
    rnd = random.Random(rank)
    answers = ["\\frac{1}{2}", "0.5", "12", "(1, 2)", "[0, \\infty)", "x^2 + 1", None]
    mine = range(rank, problems, world)  # each rank generated a share of the problems, both views
    return [Record(f"math500/{p}", v, rnd.choice(answers), "12", rnd.random() if v else None)
            for p in mine for v in (0, 1) for _ in range(samples)]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    records = local_records(args.problems, args.samples, rank, world)
    reducer = Reducer(AlgorithmConfig(), equivalence=Equivalence("exact") if rank == 0 else None)

    def baseline():
        everything = [None] * world
        dist.all_gather_object(everything, [_to_wire(r) for r in records])

    ours = timed(lambda: reducer(records, step=0), args.repeats)
    base = timed(baseline, args.repeats)
    _, _, metrics = reducer(records, step=0)
    if rank == 0:
        n = len(records) * world
        size = len(pickle.dumps([_to_wire(r) for r in records])) * world
        print(f"{n} records ({size / 1e6:.2f} MB pickled) on {world} gloo ranks, median of {args.repeats}")
        print(f"  reducer (gather + compute + scatter): {ours * 1e3:8.1f} ms "
              f"(gather {metrics['time/gather_s'] * 1e3:.1f}, compute "
              f"{(metrics['time/equivalence_s'] + metrics['time/consensus_s']) * 1e3:.1f})")
        print(f"  baseline all_gather_object only:      {base * 1e3:8.1f} ms")
        print(f"  ratio reducer / baseline: {ours / base:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
