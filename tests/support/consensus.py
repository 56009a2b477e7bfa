"""Shared helpers for the consensus tests (not a test module)."""

import random


class ExactClasses:
    """Stand-in for answers.Equivalence in exact mode: ids by first appearance of the stripped
    string; None or blank -> no answer."""

    def __init__(self):
        self.stats = {"calls": 0}

    def classes_batch(self, problems):
        self.stats["calls"] += 1
        out = []
        for answers in problems:
            ids = {}
            keys = [a.strip() if isinstance(a, str) and a.strip() else None for a in answers]
            out.append([None if k is None else ids.setdefault(k, len(ids)) for k in keys])
        return out


def synthetic_records(n_problems=12, n=6, views=2, seed=0):
    """Shuffled rows of a batch: each problem's views spread over the list, some unparsable and
    malformed answers, ground truth on most problems."""
    from harmony_mcore.consensus.reducer import Record

    rnd = random.Random(seed)
    rows = []
    for p in range(n_problems):
        truth = str(p % 5)
        pool = [truth, truth, str(p % 5 + 1), str(p % 5 + 2), None, "  "]
        gt = truth if p % 4 else None
        for v in range(views):
            for _ in range(n):
                rows.append(Record(f"p{p:02d}", v, rnd.choice(pool), gt))
    rows[3].answer = {"not": "a string"}
    rnd.shuffle(rows)
    return rows
