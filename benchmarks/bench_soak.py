"""Soak: does the local cluster give its memory back? (issue 11's "Done when")

    .venv/bin/python benchmarks/bench_soak.py [SCALE]

Runs 200k tasks, 100k puts, 50 x 64 MiB objects and 50 distinct 8 MB closures (times SCALE,
default 1) on a 2-CPU local cluster, releasing everything, then compares the resident memory of
the head, the node and the executors with what it was after a warm-up. Goal: each within 20%.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import psutil

import starburst


def cluster_rss() -> dict[str, int]:
    head = starburst.api._started_head.pid
    out = {"head": psutil.Process(head).memory_info().rss}
    for child in psutil.Process(head).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            kind = "executor" if "executor" in cmd else "node" if "starburst.node" in cmd else "other"
            out[f"{kind}-{child.pid}"] = child.memory_info().rss
        except psutil.Error:
            pass
    return out


def settle(baseline: dict[str, int], timeout: float = 30.0) -> dict[str, int]:
    """RSS once it stops falling (or after ``timeout``); ``baseline`` is unused (kept for symmetry)."""
    deadline = time.monotonic() + timeout
    last = cluster_rss()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cluster_rss()
        if sum(now.values()) >= sum(last.values()):
            return now
        last = now
    return last


def main(scale: float) -> int:
    starburst.init(num_cpus=2)

    @starburst.remote
    def inc(x):
        return x + 1

    @starburst.remote
    def size(a):
        return len(a)

    starburst.get([inc.remote(i) for i in range(100)])
    baseline = settle({})
    t0 = time.monotonic()
    n_tasks, n_puts, n_big, n_closures = (int(200_000 * scale), int(100_000 * scale), max(1, int(50 * scale)),
                                          max(1, int(50 * scale)))
    phases = os.environ.get("SOAK_PHASES", "tasks,puts,big,closures").split(",")  # to see which one keeps memory
    n_tasks, n_puts = (n_tasks if "tasks" in phases else 0), (n_puts if "puts" in phases else 0)
    n_big, n_closures = (n_big if "big" in phases else 0), (n_closures if "closures" in phases else 0)
    for start in range(0, n_tasks, 10_000):
        starburst.get([inc.remote(i) for i in range(start, min(n_tasks, start + 10_000))])
    for start in range(0, n_puts, 10_000):
        refs = [starburst.put(i) for i in range(start, min(n_puts, start + 10_000))]
        del refs
    for _ in range(n_big):
        ref = starburst.put(bytes(64 << 20))
        assert starburst.get(size.remote(ref)) == 64 << 20
        del ref
    for i in range(n_closures):
        blob = bytes([i % 256]) * (8 << 20)

        def closure(blob=blob):
            return len(blob)

        f = starburst.remote(closure)
        assert starburst.get(f.remote()) == 8 << 20
        del f, closure, blob
    gc.collect()
    elapsed = time.monotonic() - t0
    end = settle(baseline)
    print(f"soak x{scale:g}: {n_tasks} tasks, {n_puts} puts, {n_big} x 64 MiB, {n_closures} x 8 MB closures "
          f"in {elapsed:.1f} s")
    ok = True
    for name in sorted(set(baseline) | set(end)):
        before, after = baseline.get(name), end.get(name)
        if before is None or after is None:
            print(f"  {name:<18} {'(started during the run)' if before is None else '(gone)'}")
            continue
        ratio = after / before
        ok &= ratio <= 1.2
        print(f"  {name:<18} {before / 2**20:8.1f} MiB -> {after / 2**20:8.1f} MiB  ({ratio:.2f}x)")
    print("within 20%" if ok else "NOT within 20%")
    starburst.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
