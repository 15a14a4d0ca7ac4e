"""The inputs of the burst policy as pure functions: the backlog estimated from per-function run
times, the learned node start time, and the hybrid cluster's options checked at the door."""

from __future__ import annotations

import pytest

from starburst.aws.cluster import check_options
from starburst.head.burst import DEFAULT_TASK_S, Backlog, estimate_backlog, learn_start


def test_queued_tasks_count_their_run_time_and_running_ones_half_of_it():
    assert estimate_backlog([2.0, 2.0, 4.0], [6.0]) == Backlog(work_s=2 + 2 + 4 + 3, tasks=4)


def test_a_function_not_timed_yet_counts_as_the_mean_of_those_that_are():
    assert estimate_backlog([None, 1.0, 3.0], []) == Backlog(work_s=2 + 1 + 3, tasks=3)
    assert estimate_backlog([None], [None, 4.0]) == Backlog(work_s=4 + (4 + 4) / 2, tasks=3)


def test_with_nothing_timed_every_task_counts_the_default():
    assert estimate_backlog([None] * 5, [None] * 2) == Backlog(work_s=DEFAULT_TASK_S * 6, tasks=7)
    assert estimate_backlog([None], [], default_s=10.0).work_s == 10.0


def test_an_empty_backlog_is_no_work():
    assert estimate_backlog([], []) == Backlog(work_s=0.0, tasks=0)


def test_the_start_time_moves_toward_what_nodes_take():
    start = 45.0
    for _ in range(20):
        start = learn_start(start, 5.0)
    assert 5.0 < start < 6.0
    assert 5.0 < learn_start(45.0, 5.0) < 45.0  # one sample moves it, not all the way


def test_a_hybrid_cluster_is_checked_at_the_door():
    options = check_options(local=True, burst="auto", max_wait=30, workers=8)
    assert options.local and options.burst == "auto" and options.max_wait == 30
    assert (options.workers_min, options.workers_max) == (0, 8)  # workers=N: up to N cloud nodes
    assert check_options(local=True, workers=(1, 3)).workers_min == 1
    assert check_options(local=True).burst == "auto"
    with pytest.raises(ValueError, match="add local=True"):
        check_options(burst="auto")
    with pytest.raises(ValueError, match="add local=True"):
        check_options(max_wait=10)
    with pytest.raises(ValueError, match="burst='sometimes'"):
        check_options(local=True, burst="sometimes")
    with pytest.raises(ValueError, match="max_wait must be"):
        check_options(local=True, max_wait=-1)
    with pytest.raises(TypeError, match="local must be True or False"):
        check_options(local="yes")


def test_init_refuses_burst_options_without_local_before_starting_anything():
    import starburst

    with pytest.raises(ValueError, match="add local=True"):
        starburst.init(cluster="fargate", burst="always")
    with pytest.raises(ValueError, match="apply to cluster='fargate' only"):
        starburst.init(local=True)
    assert not starburst.is_initialized()


def test_the_scheduler_reports_its_backlog_and_where_tasks_ran():
    from test_scheduler_unit import Harness  # the scheduler state machine with fake nodes

    from starburst._proto import starburst_pb2 as pb

    h = Harness()
    ids = h.submit(*(h.spec() for _ in range(4)))
    assert h.s.backlog() == ([None] * 4, [])  # no node: all queued at the head, not timed yet
    node = h.add_node("local-0", cpus=1)
    h.step([pb.NodeToHeadOp(running=1)], node)
    queued, running = h.s.backlog()
    assert len(running) == 1 and len(queued) == 3  # one started at the node, the rest queued (there or here)
    h.step([pb.NodeToHeadOp(done=pb.TaskDone(task_id=ids[0], duration_s=2.0))], node)
    queued, running = h.s.backlog()
    assert sorted(queued + running) == [2.0] * 3  # now the function's run time is known
    assert h.s.ran_on == {"local-0": 1}
    assert estimate_backlog(queued, running).tasks == 3
