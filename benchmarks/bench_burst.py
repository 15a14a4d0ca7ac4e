#!/usr/bin/env python3
"""Hybrid bursting over the offline Fargate rehearsal: a bursty trace under three policies.

    .venv/bin/python benchmarks/bench_burst.py              # ~5 min
    .venv/bin/python benchmarks/bench_burst.py --scale 0.05 # faster, cruder

A hybrid cluster (``init(cluster="fargate", local=True, num_cpus=2, workers=4, cpu=2)``: this
machine's node with 2 CPUs, up to 4 Fargate nodes of 2 vCPU) replays the same trace under
``burst="never"`` (local only), ``"always"`` and ``"auto"``. Time is scaled by ``--scale``
(default 0.1): the fake ECS agent delays each node's start by ``45 s x scale`` (Fargate's
provisioning and image pull; the node process's own start comes on top), the auto policy's
``max_wait`` is ``30 s x scale`` and its first guess of the start time ``45 s x scale`` (it learns
the real one). Tasks sleep (they hold a CPU slot, not a core: the machine is shared).

The trace: bursts of tasks of mixed sizes (durations drawn from a seeded generator) arriving over
time. Reported per policy: each burst's completion time (arrival of its first task to its last
result), the Fargate tasks launched (RunTask) and started (by the agent: a task stopped while it
still "provisions" never starts), their node-seconds and the meter's cost (per-second billing
with Fargate's 1-minute minimum from RunTask, at real prices; with time scaled down the minimum
weighs far more than it would at full scale).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)

#: (arrival s at full scale, tasks, (shortest, longest) task s at full scale)
TRACE = [
    (0.0, 8, (2.0, 6.0)),  # small: the laptop finishes it well within max_wait
    (60.0, 16, (4.0, 10.0)),  # medium: ~1 min on the laptop alone, too little to pay for a burst
    (180.0, 120, (5.0, 15.0)),  # large: ~10 min alone; worth a burst
    (300.0, 10, (2.0, 6.0)),  # small again, while the large one may still run
]
POLICIES = ("never", "always", "auto")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def durations(scale: float) -> list[tuple[float, list[float]]]:
    rng = random.Random(17)
    return [(at * scale, [rng.uniform(lo, hi) * scale for _ in range(n)]) for at, n, (lo, hi) in TRACE]


def replay(policy: str, scale: float, rehearsal, workdir: pathlib.Path) -> dict:
    import starburst
    from starburst.aws.provider import read_report
    from starburst.driver import process

    bursts = durations(scale)
    os.environ["STARBURST_FARGATE_START_S"] = f"{45.0 * scale:g}"
    kwargs = dict(max_wait=30.0 * scale) if policy == "auto" else {}
    with rehearsal.agent(workdir / f"nodes-{policy}", start_delay_s=45.0 * scale) as agent:
        starburst.init(cluster="fargate", local=True, num_cpus=2, workers=4, cpu=2, memory="4GB", lease=60,
                       burst=policy, **kwargs)
        cluster_id = process.find_head().cluster_id
        try:
            f = starburst.remote(max_retries=5)(nap)
            starburst.get(f.remote(0.0))  # the function is known to the head before the clock starts
            t0 = time.monotonic()
            pending: dict = {}  # ref -> burst index
            finished_at: dict[int, float] = {}
            arrived: dict[int, float] = {}
            left = {i: len(d) for i, (_, d) in enumerate(bursts)}
            upcoming = list(enumerate(bursts))
            while upcoming or pending:
                now = time.monotonic() - t0
                while upcoming and upcoming[0][1][0] <= now:
                    i, (_, ds) = upcoming.pop(0)
                    arrived[i] = time.monotonic() - t0
                    for d in ds:
                        pending[f.remote(d)] = i
                if not pending:
                    time.sleep(max(0.0, min(0.05, upcoming[0][1][0] - now)))
                    continue
                ready, _ = starburst.wait(list(pending), num_returns=1, timeout=0.05)
                for ref in ready:
                    i = pending.pop(ref)
                    starburst.get(ref)
                    left[i] -= 1
                    if left[i] == 0:
                        finished_at[i] = time.monotonic() - t0
            status = process.head_status(process.find_head().address, 10).cluster
            where = (status.tasks_local, status.tasks_cloud)
        finally:
            starburst.shutdown()
        launched = agent.started_count
    report = read_report(cluster_id)
    bill = report.bill if report else None
    return {
        "policy": policy,
        "burst_s": [finished_at[i] - arrived[i] for i in range(len(bursts))],
        "launched": bill.nodes if bill else -1, "started": launched,
        "node_s": bill.node_seconds if bill else float("nan"),
        "cost": bill.cost if bill else float("nan"), "tasks_local": where[0], "tasks_cloud": where[1],
        "always_estimate": report.always_cost if report else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="time scale of the trace and node starts")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    sys.path.insert(0, HERE)
    from bench_fargate import MotoProcess
    from rehearsal.fargate import Rehearsal
    from s3_fixtures import SeaweedServer

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-burst-"))
    seaweed, moto = SeaweedServer(), MotoProcess(workdir / "moto.log")
    rehearsal = None
    results = []
    try:
        rehearsal = Rehearsal(moto.start(), seaweed.start(), workdir / "home").enter()
        for policy in args.policies.split(","):
            log(f"policy {policy} ...")
            results.append(replay(policy, args.scale, rehearsal, workdir))
            log(json.dumps(results[-1]))
    finally:
        if rehearsal is not None:
            rehearsal.exit()
        moto.stop()
        seaweed.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    sizes = [len(d) for _, d in durations(args.scale)]
    print(f"bursty trace at scale {args.scale:g}: bursts of {sizes} tasks; load {os.getloadavg()[0]:.1f}")
    print(f"{'policy':8} {'per-burst completion (s)':34} {'mean':>6} {'launched/started':>16} {'node-s':>7} "
          f"{'cost $':>8} {'local/cloud tasks':>18}")
    for r in results:
        per = " ".join(f"{s:6.1f}" for s in r["burst_s"])
        mean = sum(r["burst_s"]) / len(r["burst_s"])
        nodes = f"{r['launched']}/{r['started']}"
        print(f"{r['policy']:8} {per:34} {mean:6.1f} {nodes:>16} {r['node_s']:7.0f} {r['cost']:8.4f} "
              f"{r['tasks_local']:>8}/{r['tasks_cloud']:<9}")
    by = {r["policy"]: r for r in results}
    if {"always", "auto", "never"} <= set(by):
        mean = {p: sum(by[p]["burst_s"]) / len(by[p]["burst_s"]) for p in by}
        largest = max(range(len(sizes)), key=sizes.__getitem__)
        print(f"auto/always cloud cost {by['auto']['cost'] / by['always']['cost']:.2f} (goal <= 0.50), "
              f"node-seconds {by['auto']['node_s'] / max(by['always']['node_s'], 1e-9):.2f}; "
              f"mean burst completion auto/always {mean['auto'] / mean['always']:.2f} (goal <= 1.10); "
              f"largest burst auto/local-only {by['auto']['burst_s'][largest] / by['never']['burst_s'][largest]:.2f} "
              "(goal <= 0.60)")
    for r in results:
        print(f"{r['policy']}: the shutdown report's estimate of burst='always' on its backlog: "
              f"${r['always_estimate']:.4f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
