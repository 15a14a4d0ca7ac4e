"""A hybrid cluster in the Fargate rehearsal: this machine's node runs tasks at once, and Fargate
nodes (the fake agent's, starting after a delay) are launched only when the burst policy says the
backlog pays for them (``starburst.head.burst``), then stopped when the laptop can finish alone.

The policy's inputs are scaled down for the run: nodes take ``START_DELAY_S`` to start (the policy
is seeded with ``START_SEED_S`` and learns the real figure), and ``max_wait`` is a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


import starburst
from conftest import wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

START_DELAY_S = 2.0
START_SEED_S = "3"
HYBRID = dict(cluster="fargate", local=True, num_cpus=2, cpu=1, memory="2GB", lease=30)


@pytest.fixture
def agent(rehearsal, tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_FARGATE_START_S", START_SEED_S)  # the head inherits it
    with rehearsal.agent(tmp_path / "nodes", start_delay_s=START_DELAY_S) as a:
        try:
            yield a
        finally:
            starburst.shutdown()


def _cluster():
    from starburst.driver import process

    info = process.find_head()
    assert info is not None
    return info


def _status():
    from starburst.driver import process

    reply = process.head_status(_cluster().address, 10)
    assert reply is not None, "the head did not answer Status"
    return reply


def _sleeper():
    @starburst.remote(max_retries=5)
    def nap(i, seconds):
        time.sleep(seconds)
        return i, os.environ.get("STARBURST_CLUSTER_ID", "")  # set on Fargate nodes only

    return nap


def test_a_small_burst_runs_on_this_machine_and_launches_no_fargate_node(rehearsal, agent, capsys):
    starburst.init(burst="auto", max_wait=5, workers=2, **HYBRID)
    cluster_id = _cluster().cluster_id
    nap = _sleeper()
    # 10 x 0.5 s on 2 local CPUs: ~2.5 s, within max_wait.
    results = starburst.get([nap.remote(i, 0.5) for i in range(10)], timeout=120)
    assert [r[0] for r in results] == list(range(10))
    assert {r[1] for r in results} == {""}  # all ran on this machine's node
    status = _status().cluster
    assert status.local_cpus == 2 and status.tasks_local == 10 and status.tasks_cloud == 0
    assert "within max_wait" in status.burst_decision, status.burst_decision
    shown = subprocess.run([sys.executable, "-m", "starburst", "status"], capture_output=True, text=True,
                           timeout=60).stdout
    assert "hybrid: 2 CPUs on this machine first; burst auto (max_wait 5 s" in shown, shown
    assert "tasks run: 10 on this machine, 0 on Fargate" in shown, shown
    assert "burst decision: 0 Fargate node(s): the laptop finishes the backlog" in shown, shown
    starburst.shutdown()
    assert agent.started_count == 0 and rehearsal.running_tasks(cluster_id) == []
    from starburst import config

    assert not (config.shm_root() / f"starburst-{cluster_id}").exists()  # the local node's scratch directory
    err = capsys.readouterr().err
    assert "0 Fargate tasks" in err and "10 tasks ran on this machine, 0 on Fargate" in err, err


def test_a_large_backlog_bursts_then_the_cloud_nodes_stop_when_the_laptop_can_finish(rehearsal, agent, capsys):
    starburst.init(burst="auto", max_wait=2, workers=2, **HYBRID)
    cluster_id = _cluster().cluster_id
    nap = _sleeper()
    # 80 x 0.5 s = 40 CPU-s: 20 s on 2 local CPUs, far past max_wait + the nodes' start.
    refs = [nap.remote(i, 0.5) for i in range(80)]
    wait_for(lambda: agent.started_count >= 1, 60, "a Fargate node to be launched")
    results = starburst.get(refs, timeout=180)
    assert [r[0] for r in results] == list(range(80))
    ran_in_cloud = sum(1 for r in results if r[1] == cluster_id)
    assert ran_in_cloud > 0, "the burst's nodes ran nothing"
    # The backlog is gone: the policy lets the cloud nodes go while the cluster lives on.
    wait_for(lambda: rehearsal.running_tasks(cluster_id) == [], 60, "the Fargate nodes to be stopped")
    status = _status().cluster
    assert status.burst_nodes == 0 and status.tasks_cloud == ran_in_cloud
    assert status.tasks_local == 80 - ran_in_cloud
    assert starburst.get(nap.remote(80, 0.0), timeout=60)[0] == 80  # the laptop's node still serves
    starburst.shutdown()
    err = capsys.readouterr().err
    assert f"{80 - ran_in_cloud + 1} tasks ran on this machine, {ran_in_cloud} on Fargate" in err, err
    assert "burst='always' would have cost about $0.0" in err, err  # 2 nodes from the start: more than one minute


def test_max_cost_bounds_the_burst_and_the_laptop_finishes_the_work(rehearsal, agent):
    # One 1 vCPU / 2 GB node's first minute costs more than this: no node may launch.
    starburst.init(burst="auto", max_wait=2, workers=2, max_cost=0.0002, **HYBRID)
    cluster_id = _cluster().cluster_id
    nap = _sleeper()
    refs = [nap.remote(i, 1.0) for i in range(40)]  # 20 s on the laptop: a burst would be asked for
    wait_for(lambda: "max_cost" in _status().cluster.message, 120, "the budget to refuse the burst")
    assert [r[0] for r in starburst.get(refs, timeout=120)] == list(range(40))
    assert _status().cluster.tasks_local == 40
    assert agent.started_count == 0 and rehearsal.running_tasks(cluster_id) == []


def test_a_cloud_node_killed_mid_burst_loses_nothing(rehearsal, agent):
    import numpy as np

    starburst.init(burst="auto", max_wait=2, workers=2, **HYBRID)
    cluster_id = _cluster().cluster_id
    big = starburst.put(np.arange(2**17, dtype=np.float64))  # 1 MiB: through S3, to both kinds of node

    @starburst.remote(max_retries=5)
    def nap(i, seconds, a):
        time.sleep(seconds)
        return i, os.environ.get("STARBURST_CLUSTER_ID", ""), float(a.sum()), np.full(2**17, i)

    refs = [nap.remote(i, 0.5, big) for i in range(80)]
    (record,) = agent.wait_for_nodes(1, timeout=60)[:1]
    wait_for(lambda: _status().cluster.tasks_cloud > 0, 60, "the Fargate node to run tasks")
    agent.kill(record.task_arn, signal.SIGKILL)
    results = starburst.get(refs, timeout=180)
    assert [r[0] for r in results] == list(range(80))
    assert {r[2] for r in results} == {float(np.arange(2**17).sum())}
    assert all(r[3].shape == (2**17,) and r[3][0] == r[0] for r in results)  # large results from both kinds
    assert {r[1] for r in results} == {"", cluster_id}  # ran on this machine and on Fargate
    assert record.task_arn not in rehearsal.running_tasks(cluster_id)
