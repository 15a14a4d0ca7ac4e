"""CPU time per task in each process of the local cluster (driver, head, node, executors).

Wall-clock figures on a shared 2-core machine move by tens of percent between runs; the CPU time
each process spends (``psutil`` user + system) over N tasks is far steadier, and it is what caps
one head's throughput. Usage, from the repository root:

    .venv/bin/python benchmarks/bench_cpu.py                 # 20,000 tasks, 5,000 actor calls
    .venv/bin/python benchmarks/bench_cpu.py -n 20000 --profile out/   # also py-spy the head and node

With ``--profile DIR`` each measured phase runs under ``py-spy record`` (head and node, raw
collapsed stacks in DIR) and the top frames by own time are printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import starburst
from starburst import config


@starburst.remote
def nop() -> int:
    return 1


@starburst.remote
class Pinger:
    def ping(self) -> int:
        return 1


def cluster_processes() -> dict[str, list[psutil.Process]]:
    head = psutil.Process(json.loads(config.head_file().read_text())["pid"])
    roles: dict[str, list[psutil.Process]] = {"driver": [psutil.Process()], "head": [head], "node": [],
                                              "executors": []}
    for child in head.children():
        roles["node"].append(child)
        roles["executors"].extend(child.children(recursive=True))
    return roles


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(name: str, n: int, body, profile_dir: str | None) -> dict:
    roles = cluster_processes()
    spies = []
    if profile_dir:
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        for role in ("head", "node"):
            for p in roles[role]:
                out = os.path.join(profile_dir, f"{name}-{role}.txt")
                spies.append((role, out, subprocess.Popen(
                    [spy, "record", "--format", "raw", "-r", "200", "-o", out, "--pid", str(p.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(1.0)
    before = {role: cpu(procs) for role, procs in roles.items()}
    t0 = time.perf_counter()
    body()
    wall = time.perf_counter() - t0
    roles_after = cluster_processes()  # executors may have been added
    after = {role: cpu(procs) for role, procs in roles_after.items()}
    for _role, _out, proc in spies:
        proc.send_signal(2)
    for role, out, proc in spies:
        proc.wait(timeout=30)
        print(f"--- {name}: {role} (py-spy, top by own samples) ---")
        print(top_frames(out))
    per = {role: (after[role] - before.get(role, 0.0)) / n * 1e3 for role in after}
    per["chain"] = sum(per.values())
    return {"name": name, "n": n, "wall_s": wall, "rate": n / wall, "cpu_ms_per_task": per}


#: Leaf frames of threads that wait (py-spy samples them as busy when they block in a syscall).
IDLE = ("EpollSelector.select", "Popen._try_wait", "_worker (concurrent", "Thread.run", "_await_confirmation")


def top_frames(path: str, k: int = 12) -> str:
    """The event loop's busiest frames in a raw py-spy profile: by own samples, and the
    starburst functions by inclusive samples (waiting threads left out)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                frames = stack.split(";")
                if any(w in frames[-1] for w in IDLE) or any("threading.py" in fr for fr in frames):
                    continue
                c = int(count)
                total += c
                own[frames[-1]] += c
                for name in {re.sub(r" \\(.*:\\d+\\)$", "", fr) for fr in frames if "starburst/" in fr}:
                    incl[name] += c
    except (OSError, ValueError):
        return "(no profile)"
    lines = [f"busy samples: {total}", "own:"]
    lines += [f"{c / max(total, 1):6.1%}  {frame}" for frame, c in own.most_common(k)]
    lines.append("inclusive (starburst functions):")
    lines += [f"{c / max(total, 1):6.1%}  {name}" for name, c in incl.most_common(k)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="tasks for the async batch")
    p.add_argument("--sync-n", type=int, default=2000, help="sync task round trips and sync actor calls")
    p.add_argument("--actor-n", type=int, default=5000, help="pipelined actor calls")
    p.add_argument("--profile", default=None, help="directory for py-spy profiles of head and node")
    args = p.parse_args()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    starburst.init()
    starburst.get([nop.remote() for _ in range(500)])
    a = Pinger.remote()
    starburst.get([a.ping.remote() for _ in range(500)])
    results = [
        measure("async tasks", args.n, lambda: starburst.get([nop.remote() for _ in range(args.n)]), args.profile),
        measure("sync tasks", args.sync_n,
                lambda: [starburst.get(nop.remote()) for _ in range(args.sync_n)], args.profile),
        measure("pipelined actor calls", args.actor_n,
                lambda: starburst.get([a.ping.remote() for _ in range(args.actor_n)]), args.profile),
        measure("sync actor calls", args.sync_n,
                lambda: [starburst.get(a.ping.remote()) for _ in range(args.sync_n)], args.profile),
    ]
    starburst.shutdown()
    print(f"{'phase':<24}{'n':>7}{'rate/s':>9}  CPU ms per task: " + "  ".join(
        f"{r:>9}" for r in ("driver", "head", "node", "executors", "chain")))
    for r in results:
        c = r["cpu_ms_per_task"]
        print(f"{r['name']:<24}{r['n']:>7}{r['rate']:>9.0f}  {'':16}" + "  ".join(
            f"{c[k]:>9.3f}" for k in ("driver", "head", "node", "executors", "chain")))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
