"""The head's timeline ring (head/timeline.py): the last runs, in order, in bounded memory."""

from __future__ import annotations

import pytest

from starburst.head.timeline import Timeline


def test_it_keeps_the_last_runs_oldest_first():
    timeline = Timeline(3)
    assert list(timeline) == []
    for i in range(5):
        timeline.append(f"f{i % 2}", "local-0", 100 + i, float(i), i + 0.5, i == 3)
    assert len(timeline) == 3
    assert list(timeline) == [("f0", "local-0", 102, 2.0, 2.5, False), ("f1", "local-0", 103, 3.0, 3.5, True),
                              ("f0", "local-0", 104, 4.0, 4.5, False)]


def test_names_made_per_task_do_not_pile_up():
    timeline = Timeline(10)
    for i in range(10_000):
        timeline.append(f"task-{i}", f"node-{i % 3}", 1, 0.0, 1.0, False)
    assert len(timeline._labels) <= 4 * 10 + 64  # compacted as it went
    assert [run[0] for run in timeline] == [f"task-{i}" for i in range(9_990, 10_000)]
    assert [run[1] for run in timeline] == [f"node-{i % 3}" for i in range(9_990, 10_000)]


def test_a_timeline_holds_at_least_one_run():
    with pytest.raises(ValueError, match="at least one"):
        Timeline(0)
