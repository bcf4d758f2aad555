"""The iterative engine on a toy search whose every number is known by hand.

Each sample starts at 0 and moves +1 per step; it is done once its value reaches its threshold
(the "labels" 1, 2, 5, 100); the score is the value. Queries are numbered 0 .. 6.
"""

from __future__ import annotations

import pytest
import torch

from robustaudit.attacks.engine import IterativeSearch, Problem, Query, view
from robustaudit.core.task import CLASSIFICATION
from robustaudit.core.threat import ThreatModel


class Counter(IterativeSearch):
    def __init__(self, compact_every: int, early_stop: bool = True, keep_last: bool = False) -> None:
        self.compact_every, self.early_stop, self.keep_last = compact_every, early_stop, keep_last
        self.batch_sizes: list[int] = []

    def _start(self, p, a, restart):
        a["xa"] = a.x.clone()
        a["thr"] = a.y.clone()  # per-sample state: compacted with the active set

    def _last(self, p):
        return 6

    def _query(self, p, a, t):
        self.batch_sizes.append(len(a.idx))
        a.tally["queries"] = a.tally["queries"] + a.alive.long()
        return Query(a["xa"], obj=a["xa"].flatten())

    def _judge(self, p, a, q):
        return q.obj >= a["thr"], q.obj, None

    def _advance(self, p, a, t, q):
        a["xa"] = torch.where(view(a.alive, q.point), q.point + 1, q.point)


def _problem() -> Problem:
    x = torch.zeros(4, 1, 1, 1)
    y = torch.tensor([1.0, 2.0, 5.0, 100.0])
    return Problem(torch.nn.Identity(), x, y, ThreatModel("linf", 1.0), None, torch.arange(4), CLASSIFICATION)


@pytest.mark.parametrize("compact_every", [1, 2, 100])
def test_first_success_kept_and_queries_counted_whatever_the_compaction(compact_every):
    engine = Counter(compact_every)
    best = engine.search(_problem(), range(1), tallies=("queries",))
    assert best.x.flatten().tolist() == [1.0, 2.0, 5.0, 6.0]  # first success; never done: highest score
    assert best.found.tolist() == [True, True, True, False]
    assert best.totals["queries"].tolist() == [2, 3, 6, 7]
    if compact_every == 2:  # compaction after query 2 drops samples 0 and 1 (done at 1 and 2); after 4, nothing
        assert engine.batch_sizes == [4, 4, 4, 2, 2, 2, 2]
    if compact_every == 1:  # sample 2 is done at query 5 and leaves before the last one
        assert engine.batch_sizes == [4, 4, 3, 2, 2, 2, 1]
    if compact_every == 100:
        assert engine.batch_sizes == [4] * 7


def test_restarts_run_only_on_samples_not_done_and_found_samples_keep_x():
    best = Counter(2).search(_problem(), range(2), tallies=("queries",))
    assert best.totals["queries"].tolist() == [2, 3, 6, 14]
    found = torch.tensor([False, False, False, True])
    best = Counter(2).search(_problem(), range(1), found=found, tallies=("queries",))
    assert best.x.flatten().tolist() == [1.0, 2.0, 5.0, 0.0]
    assert best.totals["queries"].tolist() == [2, 3, 6, 0]


def test_without_early_stop_every_sample_takes_every_step():
    engine = Counter(1, early_stop=False)
    best = engine.search(_problem(), range(1), tallies=("queries",))
    assert best.x.flatten().tolist() == [1.0, 2.0, 5.0, 6.0]  # still the first success per sample
    assert best.totals["queries"].tolist() == [7, 7, 7, 7]
    assert engine.batch_sizes == [4] * 7


def test_keep_last_keeps_the_newest_iterate_of_samples_never_done():
    class Falling(Counter):
        def _judge(self, p, a, q):
            return q.obj >= a["thr"], -q.obj, None  # the best score is the first point

    best = Falling(2).search(_problem(), range(1), tallies=("queries",))
    assert best.x.flatten().tolist() == [1.0, 2.0, 5.0, 0.0]
    newest = Falling(2, keep_last=True).search(_problem(), range(1), tallies=("queries",))
    assert newest.x.flatten().tolist() == [1.0, 2.0, 5.0, 6.0]
