import itertools

import pytest
from tests.support.consensus import ExactClasses, synthetic_records

from harmony_mcore.config import AlgorithmConfig, ConsensusConfig
from harmony_mcore.consensus.reducer import Record, Reducer, canonical_classes, compute_batch
from harmony_mcore.consensus.strategies import get_strategy
from harmony_mcore.rewards import RewardOptions

HM = get_strategy("harmonic-mean")


def _batch(records, **kw):
    return compute_batch(records, equivalence=ExactClasses(), strategy=kw.pop("strategy", HM), **kw)


def test_rewards_are_keyed_by_each_rows_own_problem():
    # A: solver 1,1,2 / reframe 1,1,3 -> label 1.  B: solver 9,8,8 / reframe 8,8,9 -> label 8.
    # Rows come reframe-first and interleaved, the way a balanced batch may arrive.
    rows = [("B", 1, "8"), ("A", 1, "1"), ("B", 1, "8"), ("A", 1, "3"), ("B", 1, "9"), ("A", 1, "1"),
            ("A", 0, "1"), ("B", 0, "9"), ("A", 0, "1"), ("B", 0, "8"), ("A", 0, "2"), ("B", 0, "8")]
    res = _batch([Record(p, v, a) for p, v, a in rows])
    assert res.rewards == [1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1]
    assert [(r.problem_id, r.label_answers) for r in res.problems] == [("B", ("8", "8")), ("A", ("1", "1"))]
    assert res.problems[0].vote.counts[0] == (2, 2)


def test_batch_equals_problem_by_problem_and_ignores_interleaving():
    records = synthetic_records(n_problems=10, n=5, views=3, seed=1)
    whole = _batch(records)
    for pid in {r.problem_id for r in records}:
        idx = [i for i, r in enumerate(records) if r.problem_id == pid]
        alone = _batch([records[i] for i in idx], num_views=3)
        assert [whole.rewards[i] for i in idx] == alone.rewards
    # Any interleaving of problems and views that keeps each (problem, view)'s own row order
    # (e.g. another split over ranks) gives the same rewards: rows sorted by (problem, view).
    perm = sorted(range(len(records)), key=lambda i: (records[i].problem_id, records[i].view))
    regrouped = _batch([records[i] for i in perm])
    assert [regrouped.rewards[perm.index(i)] for i in range(len(records))] == whole.rewards


def _digest(text):
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def test_ties_follow_the_answers_not_the_row_order():
    """An exact tie (9 and 1: one vote in each view) goes to the class whose canonical string has
    the smaller digest, whatever order the rows arrive in."""
    rows = [Record("a", 0, "9"), Record("a", 0, "1"), Record("a", 1, "1"), Record("a", 1, "9")]
    want = min(["9", "1"], key=_digest)
    for order in itertools.permutations(range(4)):
        res = _batch([rows[i] for i in order])
        assert res.problems[0].label_answers == (want, want)
        assert [res.rewards[order.index(i)] for i in range(4)] == [float(r.answer == want) for r in rows]


def test_canonical_classes_use_the_smallest_key_of_each_class():
    # classes from an equivalence: {"1/2", "0.5"} and {"3"}; the canonical string of the first is
    # the smaller of its keys whichever member comes first
    key = {"0.5": "0.5", "1/2": "\\frac{1}{2}", "3": "3"}.get
    for answers in (["1/2", "3", "0.5", None], ["0.5", None, "3", "1/2"]):
        first = {}
        ids = [None if a is None else first.setdefault("h" if a != "3" else "3", len(first)) for a in answers]
        out = canonical_classes(answers, ids, key)
        half, three = sorted(["0.5", "3"], key=_digest).index("0.5"), sorted(["0.5", "3"], key=_digest).index("3")
        assert out == [None if a is None else (three if a == "3" else half) for a in answers]


def test_metrics_by_hand():
    rows = [("a", 0, "1", "1"), ("a", 0, "1", "1"), ("a", 1, "1", "1"), ("a", 1, "2", "1"),  # label 1, right
            ("b", 0, "5", "6"), ("b", 0, None, "6"), ("b", 1, "5", "6"), ("b", 1, "6", "6"),  # label 5, wrong
            ("c", 0, "7", None), ("c", 0, "8", None), ("c", 1, "9", None), ("c", 1, 42, None)]  # no label
    res = _batch([Record(*r) for r in rows])
    m = res.metrics
    assert m["problems"] == 3 and m["responses"] == 12 and m["malformed_answers"] == 1
    assert m["coverage"] == pytest.approx(2 / 3)
    assert m["label_accuracy"] == 0.5 and m["answer_upper_bound"] == 1.0  # over a, b (with ground truth)
    assert m["accuracy/view0"] == pytest.approx(2 / 4) and m["accuracy/view1"] == pytest.approx(2 / 4)
    assert m["reward/view0"] == pytest.approx(3 / 6) and m["reward/view1"] == pytest.approx(2 / 6)
    assert m["answered/view0"] == pytest.approx(5 / 6) and m["answered/view1"] == pytest.approx(5 / 6)
    # per-view majorities: a: 1 and (1 = 2 tied), b: 5 and (5 = 6 tied), c: (7 = 8 tied) and 9
    tie = lambda *xs: min(xs, key=_digest)  # noqa: E731
    assert m["view_agreement"] == pytest.approx(((tie("1", "2") == "1") + (tie("5", "6") == "5")) / 3)
    assert [p.label_correct for p in res.problems] == [(True, True), (False, False), (None, None)]
    assert res.answers[11] is None and res.rewards[11] == 0
    assert m["sharpness/view0"] == pytest.approx((1 + 0 + 1) / 3)  # a: c = n, b: c = n/2, c: c = 0
    assert m["equivalence/calls"] == 2  # answers, then answers with the ground truth


def test_per_view_strategy_labels_and_reward_options():
    rows = [("a", 0, "1"), ("a", 0, "1"), ("a", 0, "2"), ("a", 1, "2"), ("a", 1, "2"), ("a", 1, "1")]
    res = _batch([Record(*r) for r in rows], strategy=get_strategy("self"))
    assert res.problems[0].label_answers == ("1", "2") and res.rewards == [1, 1, 0, 1, 1, 0]
    off = _batch([Record(*r) for r in rows], options=RewardOptions(reframe_reward=False))
    assert off.rewards[3:] == [0, 0, 0]
    fmt = _batch([Record("a", 0, "1"), Record("a", 1, "1", format_score=0.5)],
                 options=RewardOptions(format_penalty=0.2))
    assert fmt.rewards == [1, 1] and fmt.shaping == [0, pytest.approx(-0.1)]
    assert fmt.metrics["format_score/view1"] == 0.5


def test_gt_and_value_rewards_through_the_batch():
    rows = [Record("a", 0, "1", "2", value=0.3), Record("a", 0, "2", "2", value=0.7)]
    assert _batch(rows, reward="gt").rewards == [0, 1]
    assert _batch(rows, reward="intuitor").rewards == [0.3, 0.7]


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="record 1 .*view must be an integer"):
        _batch([Record("a", 0, "1"), Record("a", -1, "1")])
    with pytest.raises(ValueError, match="problem_id"):
        _batch([Record(["a"], 0, "1")])
    with pytest.raises(ValueError, match="disagree on ground_truth"):
        _batch([Record("a", 0, "1", "1"), Record("a", 1, "1", "2")])
    with pytest.raises(ValueError, match="num_views=2"):
        _batch([Record("a", 2, "1")], num_views=2)


def test_reducer_switches_strategy_after_warmup():
    algo = AlgorithmConfig(consensus=ConsensusConfig(strategy="harmonic-mean", warmup_strategy="ttrl",
                                                     warmup_steps=1))
    red = Reducer(algo, equivalence=ExactClasses())
    rows = [Record("a", 0, "1"), Record("a", 0, "1"), Record("a", 0, "2"), Record("a", 1, "2")]
    assert red.compute(rows, step=0).problems[0].label_answers == ("1", "1")
    assert red.compute(rows, step=1).problems[0].label_answers == ("2", "2")


def test_record_from_response():
    text = "STRATEGY: Reverse\nREWRITTEN PROBLEM: Undo it.\nSOLUTION: so \\boxed{(B)}"
    r = Record.from_response(4, 1, text, "B", choices=4)
    assert (r.problem_id, r.view, r.answer, r.ground_truth, r.format_score) == (4, 1, "B", "B", 1.0)
    assert Record.from_response(4, 1, text).answer == "(B)"
    assert Record.from_response(4, 0, text).format_score is None
    assert Record.from_response(4, 1, "\\boxed{2}", markers=False).format_score is None
    assert Record.from_response(4, 1, "\\boxed{2").answer is None


def test_reference_path_votes_exact_and_rewards_with_a_looser_equivalence():
    from harmony_mcore.answers import Equivalence

    rows = [Record("a", 0, "\\frac12"), Record("a", 0, "\\frac12"), Record("a", 0, "0.5"),
            Record("a", 1, "\\frac12"), Record("a", 1, "\\dfrac{1}{2}")]
    exact, loose = Equivalence("exact"), Equivalence("normalized")
    same = compute_batch(rows, equivalence=exact, strategy=HM)
    assert same.problems[0].vote.counts[0] == (2, 1) and same.rewards == [1, 1, 0, 1, 0]
    ref = compute_batch(rows, equivalence=exact, strategy=HM, reward_equivalence=loose)
    assert ref.problems[0].vote == same.problems[0].vote and ref.rewards == [1, 1, 0, 1, 1]
    algo = AlgorithmConfig(sharpness_coef=0.0, consensus=ConsensusConfig(match="exact", reward_match="normalized"))
    assert Reducer(algo).compute(rows, step=0).rewards == [1, 1, 0, 1, 1]
    assert Reducer(AlgorithmConfig(consensus=ConsensusConfig(match="exact"))).reward_equivalence is None


def test_reward_equivalence_path_keeps_each_views_own_label():
    """`self` strategy: each view has its own label; with exact votes and normalized rewards, a
    view's responses are rewarded against that view's label, never another view's."""
    from harmony_mcore.answers import Equivalence

    rows = [Record("a", 0, "3"), Record("a", 0, "3"), Record("a", 0, "4"),
            Record("a", 1, "\\frac{1}{2}"), Record("a", 1, "\\frac{1}{2}"), Record("a", 1, "\\dfrac{1}{2}"),
            Record("a", 1, "3")]
    out = compute_batch(rows, equivalence=Equivalence("exact"), strategy=get_strategy("self"),
                        reward_equivalence=Equivalence("normalized"), options=RewardOptions(sharpness_coef=0.0))
    assert out.problems[0].label_answers == ("3", "\\frac{1}{2}")
    assert out.rewards == [1, 1, 0, 1, 1, 1, 0]
