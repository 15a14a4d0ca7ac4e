"""The burst policy as a pure function: when a hybrid cluster launches cloud nodes, how many, and
when it lets them go (the wiring is tested end to end in the rehearsal)."""

from __future__ import annotations

import pytest

from starburst.head.burst import Backlog, BurstPolicy, Capacity, decide

POLICY = BurstPolicy(max_wait_s=30, start_s=45)


def cap(nodes=0, local=4, per_node=4, max_nodes=20, min_nodes=0):
    return Capacity(local_cpus=local, cpus_per_node=per_node, nodes=nodes, max_nodes=max_nodes, min_nodes=min_nodes)


def test_a_backlog_the_laptop_finishes_within_the_waiting_budget_stays_local():
    d = decide(Backlog(work_s=4 * 30, tasks=400), cap(), POLICY)  # exactly max_wait on 4 CPUs
    assert d.nodes == 0 and "within max_wait" in d.reason


def test_no_burst_when_nodes_would_arrive_after_the_work_is_mostly_done():
    # 60 s alone: past max_wait, but a node starting in 45 s would find 15 s of work left.
    d = decide(Backlog(work_s=4 * 60, tasks=100), cap(), POLICY)
    assert d.nodes == 0 and "before cloud nodes could help" in d.reason


def test_a_large_backlog_bursts_sized_to_drain_in_about_the_start_time():
    d = decide(Backlog(work_s=600, tasks=200), cap(), POLICY)
    # 600 - 4*45 = 420 CPU-s left at arrival; 420/45 = 9.3 CPUs needed, 4 local: 5.3 -> 2 nodes of 4.
    assert d.nodes == 2
    assert "max_wait" in d.reason


def test_never_more_nodes_than_runnable_tasks_can_fill_nor_than_max_nodes():
    assert decide(Backlog(work_s=100_000, tasks=6), cap(), POLICY).nodes == 2  # 6 tasks on 4-vCPU nodes
    assert decide(Backlog(work_s=100_000, tasks=10_000), cap(max_nodes=3), POLICY).nodes == 3


def test_running_nodes_stay_while_the_laptop_alone_would_miss_the_budget_then_go():
    # 40 s alone: not worth launching (see above), but nodes already running keep helping.
    assert decide(Backlog(work_s=4 * 40, tasks=50), cap(nodes=3), POLICY).nodes == 3
    # Once the laptop alone finishes within max_wait, they go down to the minimum.
    assert decide(Backlog(work_s=4 * 20, tasks=20), cap(nodes=3, min_nodes=1), POLICY).nodes == 1


def test_modes():
    backlog = Backlog(work_s=10, tasks=9)
    assert decide(backlog, cap(), BurstPolicy(mode="always")).nodes == 3  # a node per 4 tasks
    assert decide(Backlog(work_s=1e6, tasks=1000), cap(min_nodes=1), BurstPolicy(mode="never")).nodes == 1
    # A cluster with no local CPUs is all-cloud whatever the mode says.
    assert decide(backlog, cap(local=0), POLICY).nodes == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sometimes"}, "burst='sometimes'"),
    ({"max_wait_s": -1}, "max_wait=-1"),
    ({"start_s": 0}, "start_s=0"),
])
def test_bad_settings_are_refused_with_what_to_use(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BurstPolicy(**kwargs)
