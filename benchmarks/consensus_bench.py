"""Consensus reducer benchmark: one training step's answers -> equivalence classes -> labels.

Load: 512 problems x 2 views x 16 samples (the reducer's input at the default batch), built
from the real MATH-500 ground truths and real model responses (the Qwen2.5-Math CoT file):
mostly the correct value (often in another format: 1/2, \\frac{1}{2}, \\dfrac12, 0.5, units,
`x=`), some wrong values, no-answers, unparsable and a few pathological answers.

  ours      extract_boxed -> Equivalence("math").classes_batch -> harmonic-mean label
  baseline  "direct port": per problem, greedy clustering that calls math-verify (parse both,
            verify both ways) against each cluster representative; no normalisation, no
            dedupe, no cache, one process; math-verify's own SIGALRM timeouts.

The baseline runs in a child process killed after --baseline-cap-s per problem (it can hang
on pathological answers); problems it did not finish are left out of the label comparison.
It is slow, so by default it runs on the first --baseline-problems problems and its time
is scaled to the whole batch (printed as such). A second, adversarial batch (towers of
exponents, huge factorials, 100k-character strings, unbalanced braces, deep nesting) must
finish with each bad answer reported.

  PYTHONPATH=. python benchmarks/consensus_bench.py [--baseline-problems 512]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from fractions import Fraction
from pathlib import Path

from harmony_mcore.answers import Equivalence, extract_boxed
from harmony_mcore.consensus.strategies import get_strategy

REPO = Path(__file__).resolve().parents[1]
MATH500 = REPO / "harmony_mcore" / "data" / "files" / "math500_ttrl.json"
QWEN_OUTPUTS = REPO / "tests" / "support" / "data" / "qwen25math_math_cot_100_8samples.jsonl"
VIEWS, SAMPLES = 2, 16

PATHOLOGICAL = [
    "2^{2^{2^{2^{2^{2}}}}}",
    "10^{10^{10}}",
    "\\frac{5^{(5^{(5^{5^5})})-4}-5}{16}",
    "(10^{10})!",
    "1000000!",
    "9" * 100_000,
    "x" * 100_000,
    "\\frac{1}{2",
    "\\sqrt{\\sqrt{\\sqrt{2}",
    "{" * 5000 + "1" + "}" * 5000,
    "\\sqrt{" * 300 + "2" + "}" * 300,
    "(" * 3000 + ")" * 3000,
    "\\frac{1}{0}",
    "0^0",
    "\\infty - \\infty",
    "2^{10^{7}}",
    "\\binom{10^{9}}{10^{5}}",
    "\\binom{10^{9}}{10^{5}+1}",  # with the one above: a pair sympy compares for minutes
    "10^{-10^{10}}",
]
UNPARSABLE = ["I don't know", "see above", "\\text{no clue}", "???", "\\frac{}{}", "$", "\\boxed{"]


# ---------------------------------------------------------------------------------------
# Realistic answers


def _variant(gt: str, rng: random.Random) -> str:
    """The same answer as a model might write it differently."""
    try:
        v = Fraction(gt.replace("\\frac{", "").replace("}{", "/").replace("}", "")) if "\\frac" in gt else Fraction(gt)
    except (ValueError, ZeroDivisionError):
        v = None
    if v is not None:
        forms = [str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"]
        if v.denominator == 1:
            n = v.numerator
            forms += [f"{n}.0", f"x = {n}", f"{n} \\text{{ units}}", f"{{{n}}}", f"{n}."]
            if abs(n) >= 1000:
                forms.append(f"{n:,}")
        else:
            p, q = abs(v.numerator), v.denominator
            sign = "-" if v < 0 else ""
            forms += [f"{sign}\\frac{{{p}}}{{{q}}}", f"{sign}\\dfrac{{{p}}}{{{q}}}", f"{sign}\\tfrac{{{p}}}{{{q}}}"]
            if p < 10 and q < 10:
                forms.append(f"{sign}\\frac{p}{q}")
            if 10**6 % q == 0:
                forms.append(str(float(v)))
        return rng.choice(forms)
    forms = [gt, gt.replace("\\frac", "\\dfrac"), gt.replace(" ", ""), gt.replace(",", ", "),
             gt.replace("\\left", "").replace("\\right", ""), f"\\text{{{gt}}}" if gt.isalpha() else gt]
    return rng.choice(forms)


def _wrong(gt: str, others: list[str], rng: random.Random) -> list[str]:
    """1-4 plausible wrong answers: nearby integers, or other problems' answers."""
    k = rng.randint(1, 4)
    try:
        n = int(gt)
        return list({str(n + d) for d in rng.sample([-2, -1, 1, 2, n, 10], k)} - {gt})
    except ValueError:
        return [rng.choice(others) for _ in range(k)]


def make_batch(n_problems: int, seed: int, adversarial: bool = False) -> list[dict]:
    rng = random.Random(seed)
    gts = [row["answer"] for row in json.load(open(MATH500))]
    with open(QWEN_OUTPUTS) as f:
        texts = [r for row in map(json.loads, f) for r in row["response"]]
    batch = []
    for p in range(n_problems):
        gt = gts[p % len(gts)]
        wrong = _wrong(gt, gts, rng)
        skill = rng.betavariate(2.0, 1.0)  # per-problem accuracy: most easy, some hard
        views = []
        for _ in range(VIEWS):
            acc = min(1.0, max(0.0, skill + rng.uniform(-0.15, 0.15)))
            view = []
            for _ in range(SAMPLES):
                u = rng.random()
                if adversarial and u < 0.08:
                    ans = rng.choice(PATHOLOGICAL)
                elif u < 0.03:
                    ans = None  # the model never boxed an answer
                elif u < 0.04:
                    ans = rng.choice(UNPARSABLE + (PATHOLOGICAL[:2] if rng.random() < 0.02 else []))
                elif rng.random() < acc:
                    ans = gt if rng.random() < 0.7 else _variant(gt, rng)
                else:
                    ans = rng.choice(wrong)
                body = rng.choice(texts)
                body = body[: body.rfind("\\boxed")] if "\\boxed" in body else body
                view.append(body + ("" if ans is None else f"\\boxed{{{ans}}}."))
            views.append(view)
        batch.append({"gt": gt, "views": views})
    return batch


# ---------------------------------------------------------------------------------------
# The two paths


def label_of(class_ids: list[int | None]) -> frozenset[int] | None:
    """Harmonic-mean label of one problem, as the set of answer positions in its class."""
    views = [class_ids[k * SAMPLES:(k + 1) * SAMPLES] for k in range(VIEWS)]
    label = get_strategy("harmonic-mean")(views).labels[0]
    if label is None:
        return None
    return frozenset(i for i, c in enumerate(class_ids) if c == label)


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a live process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _worker_pids(eq: Equivalence) -> list[int]:
    pool = eq._pool
    return [s.proc.pid for s in [*pool.slots, pool.spare]] if pool else []


def ours(batch: list[dict], eq: Equivalence) -> tuple[list, list, float, float, float]:
    """classes, labels, wall s, parent CPU s, worker CPU s."""
    pids = _worker_pids(eq)
    w0 = {pid: _cpu_s(pid) for pid in pids}
    c0, t0 = time.process_time(), time.perf_counter()
    answers = [[extract_boxed(r) for view in p["views"] for r in view] for p in batch]
    classes = eq.classes_batch(answers)
    labels = [label_of(c) for c in classes]
    wall, parent = time.perf_counter() - t0, time.process_time() - c0
    workers = sum(_cpu_s(pid) - w0[pid] for pid in pids)  # replaced workers' time is lost
    return classes, labels, wall, parent, workers


def _baseline_child(conn) -> None:
    import logging
    import resource

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    def same(a: str, b: str) -> bool:
        pa, pb = parse("\\boxed{" + a + "}"), parse("\\boxed{" + b + "}")
        return verify(pa, pb) or verify(pb, pa)

    while (answers := conn.recv()) is not None:
        t0 = time.process_time()
        reps: list[str] = []
        out = []
        for a in answers:
            if a is None or not a.strip():
                out.append(None)
                continue
            for cid, rep in enumerate(reps):
                try:
                    if same(rep, a):
                        out.append(cid)
                        break
                except (Exception, MemoryError, RecursionError):
                    pass
            else:
                reps.append(a)
                out.append(len(reps) - 1)
        conn.send((out, time.process_time() - t0))


def baseline(batch: list[dict], cap_s: float) -> tuple[list, float, float, int]:
    """Per-problem classes (None where it did not finish), summed CPU s, wall s, problems killed.

    One process, so on an idle machine its wall time equals its CPU time."""
    ctx = mp.get_context("spawn")

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_baseline_child, args=(child,), daemon=True)
        proc.start()
        return proc, parent

    proc, conn = start()
    results, total, killed = [], 0.0, 0
    t0 = time.perf_counter()
    for p in batch:
        answers = [extract_boxed(r) for view in p["views"] for r in view]
        conn.send(answers)
        if conn.poll(cap_s):
            out, dt = conn.recv()
            results.append(out)
            total += dt
        else:
            proc.kill()
            proc.join()
            results.append(None)
            total += cap_s
            killed += 1
            proc, conn = start()
    wall = time.perf_counter() - t0
    conn.send(None)
    proc.join(5)
    return results, total, wall, killed


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=512)
    ap.add_argument("--baseline-problems", type=int, default=64)
    ap.add_argument("--baseline-cap-s", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=2.0)
    ap.add_argument("--adversarial-problems", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    batch = make_batch(args.problems, args.seed)
    n_answers = args.problems * VIEWS * SAMPLES
    print(f"batch: {args.problems} problems x {VIEWS} views x {SAMPLES} samples = {n_answers} answers; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; workers={args.workers} "
          f"timeout_s={args.timeout_s}")
    print("wall times depend on the machine's load; CPU seconds do not, and give the projection "
          "for 2 idle cores: parent CPU + worker CPU / 2")

    t0 = time.perf_counter()
    eq = Equivalence("math", timeout_s=args.timeout_s, workers=args.workers)
    eq.warmup()
    print(f"worker pool start (once per run, not per step): {time.perf_counter() - t0:.2f} s")
    classes, labels, wall, parent, workers = ours(batch, eq)
    projected = parent + workers / args.workers
    print(f"ours (cold caches): wall {wall:.2f} s; CPU parent {parent:.2f} s + workers {workers:.2f} s "
          f"-> projected {projected:.2f} s on {args.workers} idle cores")
    print(f"  stats: {eq.stats.as_dict()}")
    again = ours(make_batch(args.problems, args.seed), eq)
    print(f"ours, same step again (warm caches, e.g. next epoch): wall {again[2]:.2f} s")

    nb = min(args.baseline_problems, args.problems)
    b_classes, b_cpu, b_wall, killed = baseline(batch[:nb], args.baseline_cap_s)
    scale = args.problems / nb
    scaled = "" if nb == args.problems else f" (measured on {nb} problems, scaled x{scale:.1f})"
    print(f"baseline (direct port): CPU {b_cpu * scale:.1f} s, wall {b_wall * scale:.1f} s{scaled}; "
          f"killed at the {args.baseline_cap_s:.0f} s cap: {killed}")
    done = [i for i in range(nb) if b_classes[i] is not None]
    same = [i for i in done if label_of(b_classes[i]) == labels[i]]
    same_value = [i for i in done if (label_of(b_classes[i]) or set()) & (labels[i] or set())
                  or label_of(b_classes[i]) == labels[i]]
    print(f"labels identical to the baseline (same answers in the label's class): {len(same)}/{len(done)}; "
          f"same label value (classes overlap): {len(same_value)}/{len(done)}")
    for i in done:
        if i not in same_value:
            answers = [extract_boxed(r) for view in batch[i]["views"] for r in view]
            pick = sorted({answers[k] for k in labels[i] or []})
            base = sorted({answers[k] for k in label_of(b_classes[i]) or []})
            print(f"  problem {i}: ours {pick} vs baseline {base}")
    for name, ours_s, base_s in (("2 idle cores, projected: baseline CPU (1 process) / ours projected",
                                  projected, b_cpu * scale),
                                 ("total CPU", parent + workers, b_cpu * scale),
                                 ("wall on this machine now", wall, b_wall * scale)):
        print(f"RATIO ({name}) = {base_s / ours_s:.1f}x (target >= 20x: "
              f"{'met' if base_s / ours_s >= 20 else 'NOT met'})")
    print(f"TARGET <= 2 s per step: wall here {wall:.2f} s, projected on 2 idle cores {projected:.2f} s "
          f"({'met' if projected <= 2 else 'NOT met'})")

    adv = make_batch(args.adversarial_problems, args.seed + 1, adversarial=True)
    eq_adv = Equivalence("math", timeout_s=args.timeout_s, workers=args.workers)
    eq_adv.warmup()
    adv_classes, _, t_adv, _, _ = ours(adv, eq_adv)
    s = eq_adv.stats
    print(f"adversarial batch ({args.adversarial_problems} problems, ~8% pathological answers): "
          f"finished in {t_adv:.2f} s wall; {s.timeouts} timeouts of {args.timeout_s} s; stats {s.as_dict()}")
    reported = {}
    for kind, op, form in eq_adv.incidents:
        for side in form.split(" ~ ") if op == "verify" else [form]:
            reported.setdefault(side, f"{kind} in {op}")
    for bad in PATHOLOGICAL:
        where = [(p, k) for p, prob in enumerate(adv)
                 for k, a in enumerate(extract_boxed(r) for view in prob["views"] for r in view) if a == bad]
        if not where:
            if any(f"\\boxed{{{bad}}}" in r for prob in adv for view in prob["views"] for r in view):
                print(f"  {bad[:40]!r:44}        extracted as no answer (unbalanced braces)")
            continue
        own = all(sum(c == adv_classes[p][k] for c in adv_classes[p]) ==
                  sum(a == bad for a in (extract_boxed(r) for view in adv[p]["views"] for r in view))
                  for p, k in where)
        key = Equivalence("math").key(bad) or ""
        how = reported.get(key[:200]) or "no incident (handled: numerically far from the others)"
        print(f"  {bad[:40]!r:44} x{len(where):3}  {how}; own class: {own}")
    eq.close()
    eq_adv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
