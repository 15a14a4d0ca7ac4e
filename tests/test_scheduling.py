"""Scheduling paths for short tasks: deep prefetch to the node and queues on busy executors.

A function becomes "short" once its recent run time is known to be small; from then on its tasks
are queued behind running ones. These tests warm a function up first, then check that cancel, worker
death and blocking in get() still behave with work queued on an executor.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import cli, wait_for

TIMEOUT = 60


def warm(ray, fn, *args, n=200):
    ray.get([fn.remote(*args) for _ in range(n)], timeout=TIMEOUT)


def test_many_short_tasks_complete_in_order(cluster):
    ray = cluster

    @ray.remote
    def double(i):
        return 2 * i

    warm(ray, double, 1)
    assert ray.get([double.remote(i) for i in range(3000)], timeout=TIMEOUT) == [2 * i for i in range(3000)]


def test_worker_death_does_not_charge_the_tasks_queued_behind_it(cluster, tmp_path):
    ray = cluster
    marker = tmp_path / "killed"

    @ray.remote(max_retries=0)
    def maybe_die(i, victim, marker):
        if i == victim and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return i

    warm(ray, maybe_die, 0, -1, str(marker))
    refs = [maybe_die.remote(i, 100, str(marker)) for i in range(400)]
    results = []
    for i, ref in enumerate(refs):
        if i == 100:
            with pytest.raises(ray.exceptions.WorkerCrashedError):
                ray.get(ref, timeout=TIMEOUT)
        else:
            results.append(ray.get(ref, timeout=TIMEOUT))
    # max_retries=0: any task charged with an attempt for the crash would have failed too.
    assert results == [i for i in range(400) if i != 100]


def _queued_at_nodes(home) -> int:
    """Tasks the head has sent to nodes that have not started there (``starburst status --json``)."""
    proc = cli(home, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return sum(node["queued"] for node in json.loads(proc.stdout)["nodes"])


def test_cancel_reaches_tasks_queued_on_an_executor(cluster, starburst_home, tmp_path):
    ray = cluster

    @ray.remote
    def short(i):
        time.sleep(0.001)
        return i

    @ray.remote
    def blocker(started, gate):
        open(started, "w").close()
        deadline = time.time() + 60
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.01)
        return "done"

    warm(ray, short, 0)
    gate = tmp_path / "gate"
    started = [tmp_path / f"started-{i}" for i in range(2)]
    blockers = [blocker.remote(str(path), str(gate)) for path in started]  # both CPUs busy
    try:
        wait_for(lambda: all(path.exists() for path in started), TIMEOUT, "the blockers to start")
        refs = [short.remote(i) for i in range(100)]
        # The first ones go to the node (short tasks are sent deep) and wait behind the blockers.
        wait_for(lambda: _queued_at_nodes(starburst_home) >= 8, TIMEOUT, "short tasks to be queued at the node")
        victims = refs[:4] + refs[50:54]
        for ref in victims:
            ray.cancel(ref)
        for ref in victims:  # while the blockers still hold both CPUs: cancelled where they wait
            with pytest.raises(ray.exceptions.TaskCancelledError):
                ray.get(ref, timeout=TIMEOUT)
    finally:
        gate.touch()
    for i, ref in enumerate(refs):
        if ref not in victims:
            assert ray.get(ref, timeout=TIMEOUT) == i
    assert ray.get(blockers, timeout=TIMEOUT) == ["done", "done"]


@pytest.mark.slow
def test_short_parents_blocking_on_children_do_not_deadlock(cluster):
    ray = cluster

    @ray.remote
    def child(i):
        return i + 1

    @ray.remote
    def parent(i):
        return ray.get(child.remote(i))

    warm(ray, parent, 0, n=100)  # now "short": its tasks queue behind one another on executors
    assert ray.get([parent.remote(i) for i in range(300)], timeout=TIMEOUT) == [i + 1 for i in range(300)]


def test_long_tasks_spread_over_both_cpus(cluster, tmp_path):
    """Each task announces itself and waits until another one runs too: that holds only if the
    tasks run on both CPUs at once (on one CPU, the first would give up and say so)."""
    ray = cluster

    @ray.remote
    def slow(i: int, where: str) -> tuple[int, bool]:
        import os
        import time

        open(os.path.join(where, str(i)), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(where)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.getpid(), len(os.listdir(where)) >= 2

    results = ray.get([slow.remote(i, str(tmp_path)) for i in range(4)], timeout=TIMEOUT)
    assert all(met for _, met in results), results
    assert len({pid for pid, _ in results}) >= 2


def _wait_for(path, bound=60.0):
    deadline = time.monotonic() + bound
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def test_short_tasks_do_not_wait_behind_a_straggler(cluster, tmp_path):
    """The function is known to be short, so its calls are pipelined onto busy executors; one call
    turns out long. The short calls queued behind it must move to the idle CPU: all of them finish
    while the long one still runs (it runs until the test lets it go)."""
    ray = cluster
    release = str(tmp_path / "release")

    @ray.remote
    def f(hold=None):
        if hold:
            _wait_for(hold)
        return hold

    warm(ray, f)
    long = f.remote(release)
    try:
        shorts = [f.remote() for _ in range(30)]
        assert ray.get(shorts, timeout=30) == [None] * 30
        ready, _ = ray.wait([long], timeout=0)
        assert ready == []  # the long call is still running: the short ones did not wait for it
    finally:
        open(release, "w").close()
    assert ray.get(long, timeout=TIMEOUT) == release


def test_actors_hold_their_cpus_and_wait_for_them(cluster):
    ray = cluster

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return os.getpid()

    actors = [Holder.remote() for _ in range(4)]
    pings = [a.ping.remote() for a in actors]
    try:
        ray.get(pings[:2], timeout=TIMEOUT)
        wait_for(lambda: ray.available_resources()["CPU"] == 0, 60, "both CPUs held by actors")
        ready, _ = ray.wait(pings[2:], num_returns=1, timeout=1.0)
        assert ready == []  # two actors hold both CPUs: the other two are pending
        ray.kill(actors[0])
        ready, waiting = ray.wait(pings[2:], num_returns=1, timeout=TIMEOUT)
        assert len(ready) == 1  # a pending actor started in the freed CPU
        assert ray.available_resources()["CPU"] == 0
        ready, _ = ray.wait(waiting, timeout=0.5)
        assert ready == []
    finally:
        for actor in actors:
            ray.kill(actor)
    wait_for(lambda: ray.available_resources()["CPU"] == 2, 60, "both CPUs free again")


def test_a_task_that_does_not_fit_does_not_delay_those_that_do(cluster):
    ray = cluster

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return "up"

    @ray.remote
    def one(i):
        return i

    actor = Holder.remote()
    assert ray.get(actor.ping.remote(), timeout=TIMEOUT) == "up"
    try:
        big = one.options(num_cpus=2).remote(-1)  # can't run while the actor holds a CPU
        assert ray.get([one.remote(i) for i in range(20)], timeout=30) == list(range(20))
        assert ray.wait([big], timeout=0)[0] == []
    finally:
        ray.kill(actor)
    assert ray.get(big, timeout=TIMEOUT) == -1


def test_a_task_waiting_for_cpus_at_the_node_does_not_delay_those_that_can_start(cluster, tmp_path):
    ray = cluster
    release = str(tmp_path / "release")

    @ray.remote
    def f(i, hold=None):
        if hold:
            _wait_for(hold)
        return i

    long = f.remote(0, release)
    try:
        big = f.options(num_cpus=2).remote(1)  # needs both CPUs: waits for the long one
        assert ray.get([f.remote(i) for i in range(10)], timeout=30) == list(range(10))
        assert ray.wait([long, big], timeout=0)[0] == []
    finally:
        open(release, "w").close()
    assert ray.get([long, big], timeout=TIMEOUT) == [0, 1]


@pytest.mark.slow
def test_memory_bounds_concurrency(cluster, tmp_path):
    ray = cluster
    memory = ray.cluster_resources()["memory"]
    assert memory > 0

    @ray.remote
    def hog(i, where):
        """Whether another call was running at some point while this one ran (it looks for 1.5 s)."""
        open(os.path.join(where, f"started-{i}"), "w").close()
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                names = set(os.listdir(where))
                others = {n.split("-")[1] for n in names if n.startswith("started-")} - {str(i)}
                if any(f"done-{j}" not in names for j in others):
                    return True
                time.sleep(0.01)
            return False
        finally:
            open(os.path.join(where, f"done-{i}"), "w").close()

    bounded, free = tmp_path / "bounded", tmp_path / "free"
    bounded.mkdir()
    free.mkdir()
    overlapped = ray.get([hog.options(memory=0.6 * memory).remote(i, str(bounded)) for i in range(2)],
                         timeout=TIMEOUT)
    assert overlapped == [False, False]
    # Without a memory request both run at once on the 2 CPUs (so the check above can fail).
    assert any(ray.get([hog.remote(i, str(free)) for i in range(2)], timeout=TIMEOUT))
