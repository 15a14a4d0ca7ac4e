"""The head's recall across nodes, end to end on the offline Fargate rehearsal (moto, SeaweedFS,
fake ECS agent; see tests/test_rehearsal.py): two 1-CPU nodes, one of them stuck on a long task
with short ones queued behind it while the other goes idle."""

from __future__ import annotations

import os
import time

import pytest


import starburst

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _hold(path):
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return path


def test_short_tasks_queued_on_a_node_behind_a_straggler_move_to_an_idle_node(rehearsal, tmp_path):
    release = str(tmp_path / "release")
    with rehearsal.agent(tmp_path / "nodes"):
        try:
            starburst.init(cluster="fargate", workers=2, lease=30, cpu=1, memory="2GB")
            deadline = time.monotonic() + 120
            while len(starburst.nodes()) < 2:
                assert time.monotonic() < deadline, "the second node did not join"
                time.sleep(0.1)

            @starburst.remote
            def f(hold=None):
                return _hold(hold) if hold else os.getpid()

            starburst.get([f.remote() for _ in range(200)], timeout=60)  # known short: sent 16 deep
            long = f.remote(release)
            try:
                shorts = [f.remote() for _ in range(40)]
                pids = starburst.get(shorts, timeout=60)
                assert starburst.wait([long], timeout=0)[0] == []  # still running: nobody waited for it
                assert len(set(pids)) == 1  # all ran on the other node (its only executor)
            finally:
                open(release, "w").close()
            assert starburst.get(long, timeout=60) == release
        finally:
            starburst.shutdown()
