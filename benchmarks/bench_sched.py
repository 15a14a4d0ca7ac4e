#!/usr/bin/env python3
"""Scheduling benchmarks with uneven task lengths: starburst vs Ray, in one run.

    .venv/bin/python benchmarks/bench_sched.py                # both systems (Ray from benchmarks/.venv-ray)
    .venv/bin/python benchmarks/bench_sched.py --systems starburst

1. Straggler: a function known to be short (300 warm-up calls of 1 ms) is called once with 2 s,
   then 30 times with 1 ms. Measured: time from submitting the short calls to the slowest short
   result (ideal: a few ms, the other CPU is free). 5 repetitions, median and worst.
2. Heavy-tailed batch: 600 tasks sleeping log-normal durations (median 5 ms, sigma 1.5, capped at
   1.5 s, fixed seed), submitted at once. Measured: makespan, against the ideal
   max(sum / CPUs, longest task). 2 repetitions, median.

Each system runs in its own subprocess with its own interpreter (Ray lives in its own venv, see
README.md). Both use 2 CPUs.

3. ``--fargate``: the straggler on the offline Fargate rehearsal (moto + SeaweedFS + fake ECS
   agent, as bench_fargate.py), 2 nodes of 1 vCPU behind a 40 ms link: the long call holds one
   node, its short calls queued there must move to the other (the head's recall). Goal: slowest
   short call <= RTT + 100 ms. (The driver runs in this process, next to the link's proxies.)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import _common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")
MARK = "BENCH_JSON:"
CPUS = 2


def sleep_for(t):
    time.sleep(t)
    return t


def durations(n=600, median_s=0.005, sigma=1.5, cap=1.5, seed=12):
    rng = random.Random(seed)
    return [min(cap, median_s * rng.lognormvariate(0.0, sigma)) for _ in range(n)]


def worker(system: str, reps: int, batch_reps: int) -> dict:
    if system == "ray":
        import ray
    else:
        import starburst as ray
    ray.init(num_cpus=CPUS)
    f = ray.remote(sleep_for)
    out: dict = {"system": system}
    try:
        ray.get([f.remote(0.001) for _ in range(300)])
        slowest = []
        for _ in range(reps):
            long = f.remote(2.0)
            t0 = time.perf_counter()
            ray.get([f.remote(0.001) for _ in range(30)])
            slowest.append(time.perf_counter() - t0)
            ray.get(long)
        out["straggler_s"] = slowest
        ds = durations()
        g = ray.remote(sleep_for)  # a fresh function: no run-time history
        makespans = []
        for _ in range(batch_reps):
            t0 = time.perf_counter()
            ray.get([g.remote(d) for d in ds])
            makespans.append(time.perf_counter() - t0)
        out["batch_s"] = makespans
        out["batch_ideal_s"] = max(sum(ds) / CPUS, max(ds))
    finally:
        ray.shutdown()
    return out


def fargate(reps: int) -> dict:
    import pathlib
    import tempfile

    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    from bench_fargate import MotoProcess
    from rehearsal.fargate import Rehearsal
    from s3_fixtures import SeaweedServer

    import starburst

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-sched-"))
    seaweed, moto = SeaweedServer(), MotoProcess(workdir / "moto.log")
    rehearsal = None
    out: dict = {"link_ms": 40.0}
    try:
        rehearsal = Rehearsal(moto.start(), seaweed.start(), workdir / "home").enter()
        with rehearsal.agent(workdir / "nodes", latency_ms=40.0):
            starburst.init(cluster="fargate", workers=2, lease=60, cpu=1, memory="2GB")
            try:
                deadline = time.monotonic() + 120
                while len(starburst.nodes()) < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                f = starburst.remote(sleep_for)
                starburst.get([f.remote(0.001) for _ in range(300)])
                slowest = []
                for _ in range(reps):
                    long = f.remote(2.0)
                    t0 = time.perf_counter()
                    starburst.get([f.remote(0.001) for _ in range(30)])
                    slowest.append(time.perf_counter() - t0)
                    starburst.get(long)
                out["straggler_s"] = slowest
            finally:
                starburst.shutdown()
    finally:
        if rehearsal is not None:
            rehearsal.exit()
        moto.stop()
        seaweed.stop()
    return out


def run(system: str, args) -> dict:
    python = RAY_PYTHON if system == "ray" else sys.executable
    if not os.path.exists(python):
        return {"system": system, "error": f"{python} not found (bash benchmarks/setup_ray.sh)"}
    env = dict(os.environ)
    if system == "starburst":
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cmd = [python, os.path.abspath(__file__), "--worker", system, "--reps", str(args.reps),
           "--batch-reps", str(args.batch_reps)]
    proc = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"system": system, "error": f"rc={proc.returncode}: {proc.stderr[-1500:]}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="starburst,ray")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch-reps", type=int, default=2)
    ap.add_argument("--fargate", action="store_true", help="only the straggler on the Fargate rehearsal")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fargate:
        print(_common.host_line())
        r = fargate(args.reps)
        st = r["straggler_s"]
        print(f"Fargate rehearsal, 2 x 1 vCPU nodes, {r['link_ms']:g} ms link: slowest short call "
              f"median {statistics.median(st) * 1e3:.0f} ms, worst {max(st) * 1e3:.0f} ms "
              f"(goal <= RTT + 100 ms = {r['link_ms'] + 100:g} ms)")
        print(json.dumps(r))
        return 0
    if args.worker:
        print(MARK + json.dumps(worker(args.worker, args.reps, args.batch_reps)), flush=True)
        return 0
    print(_common.host_line())
    results = {s: run(s, args) for s in args.systems.split(",")}
    rows = []
    for s, r in results.items():
        if "error" in r:
            print(f"{s}: {r['error']}")
            continue
        st, b = r["straggler_s"], r["batch_s"]
        rows.append([s, f"{statistics.median(st) * 1e3:.0f} ms", f"{max(st) * 1e3:.0f} ms",
                     f"{statistics.median(b):.2f} s", f"{r['batch_ideal_s']:.2f} s",
                     f"{statistics.median(b) / r['batch_ideal_s']:.3f}"])
    print(_common.format_table(["system", "straggler: slowest short (median)", "(worst)",
                                "heavy-tailed makespan", "ideal", "makespan / ideal"], rows))
    sb, ray = results.get("starburst", {}), results.get("ray", {})
    if "straggler_s" in sb and "straggler_s" in ray:
        straggler = statistics.median(sb["straggler_s"]) / statistics.median(ray["straggler_s"])
        batch = statistics.median(sb["batch_s"]) / statistics.median(ray["batch_s"])
        print(f"starburst / Ray: straggler {straggler:.2f}x (goal <= 2x and < 150 ms), heavy-tailed {batch:.2f}x"
              " (goal <= 1x; and <= 1.10 of ideal)")
    print(f"load avg at end: {_common.fmt_loads()}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
