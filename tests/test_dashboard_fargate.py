"""The dashboard of a rehearsed Fargate cluster (moto, SeaweedFS, the fake ECS agent): nodes, cost
so far, $/hour and the budget left."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from test_rehearsal import SMALL

import starburst

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def test_dashboard_shows_fargate_nodes_cost_and_budget(rehearsal, agent):
    ctx = starburst.init(cluster="fargate", workers=2, lease=30, max_cost=5, **SMALL)
    assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=60) == 1
    base, token = ctx.dashboard_url.split("/?token=")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def state() -> dict:
        with opener.open(f"{base}/api/state?token={token}", timeout=10) as r:
            return json.load(r)

    deadline = time.monotonic() + 60
    while len((snap := state())["nodes"]) < 2:
        assert time.monotonic() < deadline, snap
        time.sleep(0.2)
    c = snap["cluster"]
    assert c["provider"] == "fargate" and c["workers"] == [2, 2] and c["max_cost"] == 5
    assert 0 < c["cost_usd"] < 0.01 and c["cost_per_hour"] > 0
    assert c["budget_left"] == pytest.approx(5 - c["cost_usd"]) and c["hours_left"] > 1
    assert snap["objects"]["store"] == "s3"
    # The live line a long get shows on a Fargate cluster reads the same snapshot.
    import importlib

    line = importlib.import_module("starburst.progress").cluster_line(ctx.dashboard_url)
    assert line.startswith("workers 2 joined (of 2), $") and line.endswith(" left"), line
