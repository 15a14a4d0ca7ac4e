#!/usr/bin/env python3
"""Core microbenchmarks: starburst vs Ray vs concurrent.futures.ProcessPoolExecutor.

One command runs every system, each in its own subprocess with the right
interpreter, and prints one table with absolute figures and ratios:

    .venv/bin/python benchmarks/bench_core.py            # full run (~2.5 min)
    .venv/bin/python benchmarks/bench_core.py --quick    # smoke run (~50 s)

Ray conflicts with starburst's dependency pins, so it lives in its own venv
(benchmarks/.venv-ray, created by benchmarks/setup_ray.sh). If that venv is
missing, the Ray column is skipped and the script says how to create it.

Internal worker mode (what the orchestrator runs for each system):

    <python> benchmarks/bench_core.py --system {starburst,ray,processpool} --json

See benchmarks/README.md for what each measurement means.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

import _common
from _common import fmt_rate, median, percentile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_RAY_PYTHON = os.path.join(HERE, ".venv-ray", "bin", "python")
SYSTEMS = ("starburst", "ray", "processpool")
JSON_MARKER = "BENCH_JSON:"
RESULT_MARKER = "BENCH_RESULT"

ARRAY_MIB = 128
ARRAY_LEN = ARRAY_MIB * 1024 * 1024 // 8  # float64 elements


# --------------------------------------------------------------------------
# Task bodies. Kept at module level so ProcessPoolExecutor can pickle them by
# reference; Ray / starburst wrap the same functions with .remote.
# --------------------------------------------------------------------------
def nop():
    """The 'trivial task': no arguments, returns a small int."""
    return 1


def add_one(a):
    """The 'array through a task' task: returns a NEW array a + 1.

    a + 1 (rather than returning `a` itself) guarantees the data really
    reached the task and that a fresh 128 MiB result must travel back; no
    system can short-circuit it by handing back the input object. The local
    cost of a + 1 is measured too and printed as a floor.
    """
    return a + 1


class SyncActor:
    """The sync actor of f and h: a plain method returning a small int."""

    def ping(self):
        return 1


class AsyncActor:
    """The async actor of g: an `async def` method that returns at once."""

    async def ping(self):
        return 1


# --------------------------------------------------------------------------
# Per-system adapters: a uniform interface over the three systems.
# --------------------------------------------------------------------------
class RayLikeAdapter:
    """starburst and Ray share the same API."""

    has_object_store = True
    has_actors = True

    def __init__(self, name):
        self.name = name
        if name == "ray":
            import ray as mod
        else:
            import starburst as mod
        self.mod = mod
        self.version = getattr(mod, "__version__", "?")
        t0 = time.perf_counter()
        mod.init()
        self.init_s = time.perf_counter() - t0
        self.r_nop = mod.remote(nop)
        self.r_add_one = mod.remote(add_one)

    def sync_call(self):
        return self.mod.get(self.r_nop.remote())

    def submit_many(self, n):
        return [self.r_nop.remote() for _ in range(n)]

    def get_many(self, handles):
        return self.mod.get(handles)

    def put(self, value):
        return self.mod.put(value)

    def get(self, ref):
        return self.mod.get(ref)

    def array_roundtrip(self, arr):
        # put the array, run add_one on it, get the result back.
        ref = self.mod.put(arr)
        out = self.mod.get(self.r_add_one.remote(ref))
        del ref
        return out

    # ---- actors (f-h): default options on both systems ----------------
    def start_actor(self, kind):
        """Start a SyncActor / AsyncActor; returns its handle once its first call came back."""
        cls = self.mod.remote(SyncActor if kind == "sync" else AsyncActor)
        actor = cls.remote()
        assert self.mod.get(actor.ping.remote()) == 1  # constructor done, actor reachable
        return actor

    def actor_call(self, actor):
        return self.mod.get(actor.ping.remote())

    def actor_submit_many(self, actor, n):
        return [actor.ping.remote() for _ in range(n)]

    def kill_actor(self, actor):
        self.mod.kill(actor)

    def shutdown(self):
        self.mod.shutdown()


class ProcessPoolAdapter:
    """concurrent.futures.ProcessPoolExecutor with default settings."""

    has_object_store = False
    has_actors = False  # f-h: n/a

    def __init__(self, name="processpool"):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.name = name
        self.version = "python " + platform.python_version()
        t0 = time.perf_counter()
        self.ex = cf.ProcessPoolExecutor()
        self.init_s = time.perf_counter() - t0
        self.max_workers = self.ex._max_workers
        self.start_method = mp.get_start_method()

    def sync_call(self):
        return self.ex.submit(nop).result()

    def submit_many(self, n):
        return [self.ex.submit(nop) for _ in range(n)]

    def get_many(self, handles):
        return [f.result() for f in handles]

    def array_roundtrip(self, arr):
        # the array is pickled through the pool's pipe, add_one runs in a
        # worker, the result is pickled back.
        return self.ex.submit(add_one, arr).result()

    def shutdown(self):
        self.ex.shutdown()


def make_adapter(system):
    if system == "processpool":
        return ProcessPoolAdapter()
    return RayLikeAdapter(system)


# --------------------------------------------------------------------------
# Worker mode: run measurements b-h for one system, print JSON.
# --------------------------------------------------------------------------
def run_worker(system, cfg):
    import numpy as np

    res = {"system": system, "ok": True, "python": sys.executable,
           "python_version": platform.python_version(),
           "numpy_version": np.__version__, "config": cfg}

    def log(msg: str) -> None:
        print(f"[{system}] {msg}", file=sys.stderr, flush=True)

    ad = make_adapter(system)
    res["version"] = ad.version
    res["init_s"] = ad.init_s
    if system == "processpool":
        res["max_workers"] = ad.max_workers
        res["start_method"] = ad.start_method
    log(f"init {ad.init_s * 1e3:.1f} ms")

    try:
        # ---- warm-up: start workers, import paths, caches --------------
        for _ in range(cfg["warmup_sync"]):
            assert ad.sync_call() == 1
        ad.get_many(ad.submit_many(cfg["warmup_async"]))

        # ---- b. sync round trip ----------------------------------------
        lat = []
        for _ in range(cfg["sync_iters"]):
            t0 = time.perf_counter()
            v = ad.sync_call()
            lat.append(time.perf_counter() - t0)
            assert v == 1
        res["sync_p50_s"] = percentile(lat, 50)
        res["sync_p99_s"] = percentile(lat, 99)
        res["sync_mean_s"] = sum(lat) / len(lat)
        res["sync_n"] = len(lat)
        log(f"sync p50 {res['sync_p50_s'] * 1e3:.3f} ms, p99 {res['sync_p99_s'] * 1e3:.3f} ms")

        # ---- c. async throughput ---------------------------------------
        n = cfg["async_n"]
        rates = []
        for _ in range(cfg["async_runs"]):
            t0 = time.perf_counter()
            handles = ad.submit_many(n)
            t_sub = time.perf_counter() - t0
            vals = ad.get_many(handles)
            dt = time.perf_counter() - t0
            assert len(vals) == n and all(v == 1 for v in vals)
            rates.append(n / dt)
            log(f"async {n} tasks in {dt:.3f} s (submit {t_sub:.3f} s) = {n / dt:,.0f} tasks/s")
            del handles, vals
        res["async_tps"] = median(rates)
        res["async_tps_all"] = rates
        res["async_n"] = n

        # ---- 128 MiB array --------------------------------------------
        arr = np.arange(ARRAY_LEN, dtype=np.float64)
        assert arr.nbytes == ARRAY_MIB * 1024 * 1024
        # local floor for e: cost of a + 1 in this process
        floor = []
        for _ in range(3):
            t0 = time.perf_counter()
            tmp = add_one(arr)
            floor.append(time.perf_counter() - t0)
            del tmp
        res["local_add_one_s"] = median(floor)

        # ---- d. put + get ----------------------------------------------
        reps = cfg["array_reps"]
        if ad.has_object_store:
            puts, gets, tots = [], [], []
            for i in range(reps + 1):  # first one is warm-up
                t0 = time.perf_counter()
                ref = ad.put(arr)
                t1 = time.perf_counter()
                out = ad.get(ref)
                t2 = time.perf_counter()
                assert out.shape == arr.shape and out[-1] == arr[-1] and out[12345] == 12345.0
                del out, ref
                if i:
                    puts.append(t1 - t0)
                    gets.append(t2 - t1)
                    tots.append(t2 - t0)
            res["putget_s"] = median(tots)
            res["putget_all_s"] = tots
            res["put_s"] = median(puts)
            res["get_s"] = median(gets)
            res["putget_kind"] = "put+get"
        else:
            import pickle

            tots, dumps, loads = [], [], []
            for i in range(reps + 1):
                t0 = time.perf_counter()
                blob = pickle.dumps(arr, protocol=pickle.HIGHEST_PROTOCOL)
                t1 = time.perf_counter()
                out = pickle.loads(blob)
                t2 = time.perf_counter()
                assert out.shape == arr.shape and out[-1] == arr[-1]
                del out, blob
                if i:
                    dumps.append(t1 - t0)
                    loads.append(t2 - t1)
                    tots.append(t2 - t0)
            res["putget_s"] = median(tots)
            res["putget_all_s"] = tots
            res["put_s"] = median(dumps)
            res["get_s"] = median(loads)
            res["putget_kind"] = "pickle.dumps+loads (reference; no object store)"
        log(f"128 MiB {res['putget_kind']}: {res['putget_s'] * 1e3:.1f} ms "
            f"(put {res['put_s'] * 1e3:.1f}, get {res['get_s'] * 1e3:.1f})")

        # ---- e. array through a task and back --------------------------
        rt = []
        for i in range(reps + 1):  # first one is warm-up
            t0 = time.perf_counter()
            out = ad.array_roundtrip(arr)
            dt = time.perf_counter() - t0
            assert out.shape == arr.shape and out[0] == 1.0 and out[-1] == arr[-1] + 1
            del out
            if i:
                rt.append(dt)
        res["task_array_s"] = median(rt)
        res["task_array_all_s"] = rt
        log(f"128 MiB through add_one task: {res['task_array_s'] * 1e3:.1f} ms")

        # ---- f-h. actors ------------------------------------------------
        if ad.has_actors:
            run_actor_measurements(ad, cfg, res, log)
    except Exception:
        res["ok"] = False
        res["error"] = traceback.format_exc()
    finally:
        _common.timed_shutdown(res, ad.shutdown)
    return res


def run_actor_measurements(ad, cfg, res, log):
    """f. sync actor call throughput, g. async actor call throughput, h. actor call round trip.

    One fresh actor per kind (SyncActor for f and h, AsyncActor for g), default options.
    Each is started and answers one call before anything is timed (creation time is a
    note, not a measurement), then gets the same warm-up as the tasks (warmup_sync calls
    one at a time + a warmup_async batch). Round trips (sync_iters, one at a time) come
    first, then actor_runs timed batches of actor_n calls: submit all, then get all.
    The actor is killed afterwards.
    """
    n = cfg["actor_n"]
    for kind in ("sync", "async"):
        t0 = time.perf_counter()
        actor = ad.start_actor(kind)
        res[f"actor_{kind}_start_s"] = time.perf_counter() - t0
        try:
            for _ in range(cfg["warmup_sync"]):
                assert ad.actor_call(actor) == 1
            vals = ad.get_many(ad.actor_submit_many(actor, cfg["warmup_async"]))
            assert len(vals) == cfg["warmup_async"] and all(v == 1 for v in vals)

            # round trip: call + get, one at a time (h for the sync actor)
            lat = []
            for _ in range(cfg["sync_iters"]):
                t0 = time.perf_counter()
                v = ad.actor_call(actor)
                lat.append(time.perf_counter() - t0)
                assert v == 1
            res[f"actor_{kind}_rt_p50_s"] = percentile(lat, 50)
            res[f"actor_{kind}_rt_p99_s"] = percentile(lat, 99)
            log(f"{kind} actor round trip p50 {percentile(lat, 50) * 1e3:.3f} ms, "
                f"p99 {percentile(lat, 99) * 1e3:.3f} ms")

            # throughput: N calls submitted in a loop, then get all (f / g)
            rates = []
            for _ in range(cfg["actor_runs"]):
                t0 = time.perf_counter()
                refs = ad.actor_submit_many(actor, n)
                t_sub = time.perf_counter() - t0
                vals = ad.get_many(refs)
                dt = time.perf_counter() - t0
                assert len(vals) == n and all(v == 1 for v in vals)
                rates.append(n / dt)
                log(f"{kind} actor: {n} calls in {dt:.3f} s (submit {t_sub:.3f} s) = "
                    f"{n / dt:,.0f} calls/s")
                del refs, vals
            res[f"actor_{kind}_cps"] = median(rates)
            res[f"actor_{kind}_cps_all"] = rates
        finally:
            try:
                ad.kill_actor(actor)
            except Exception:
                log(f"kill of the {kind} actor failed: {traceback.format_exc().strip().splitlines()[-1]}")
    res["actor_n"] = n


# --------------------------------------------------------------------------
# a. cold start: fresh interpreter -> first remote result
# --------------------------------------------------------------------------
COLD_SNIPPETS = {
    "starburst": (
        "import starburst as ray\n"
        "ray.init()\n"
        "@ray.remote\n"
        "def f():\n"
        "    return 1\n"
        "print('" + RESULT_MARKER + "', ray.get(f.remote()), flush=True)\n"
        "ray.shutdown()\n"
    ),
    "ray": (
        "import ray\n"
        "ray.init()\n"
        "@ray.remote\n"
        "def f():\n"
        "    return 1\n"
        "print('" + RESULT_MARKER + "', ray.get(f.remote()), flush=True)\n"
        "ray.shutdown()\n"
    ),
    "processpool": (
        "from concurrent.futures import ProcessPoolExecutor\n"
        "def f():\n"
        "    return 1\n"
        "ex = ProcessPoolExecutor()\n"
        "print('" + RESULT_MARKER + "', ex.submit(f).result(), flush=True)\n"
        "ex.shutdown()\n"
    ),
    # reference: a bare interpreter printing the marker
    "baseline": "print('" + RESULT_MARKER + "', 1, flush=True)\n",
}


TAG_VAR = "BENCH_CORE_TAG"


def new_tag():
    import uuid

    return uuid.uuid4().hex


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except Exception:
        return False


def cleanup(proc, tag, grace=3.0):
    """End everything one spawned run left behind, by pid; return how many.

    Every subprocess gets its own TAG_VAR value, inherited by whatever it starts
    (daemons too, even in their own session), and its own process group. Daemons
    get `grace` seconds to exit on their own before they count as left behind.
    """
    deadline = time.monotonic() + grace
    while True:
        pids = _common.tagged_pids(TAG_VAR, tag)
        group = _group_alive(proc.pid)
        if not pids and not group:
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    n = len(pids)
    if group:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except Exception:
            pass
    return max(n, 1 if group else 0)


def cold_start_once(python, snippet, env, timeout):
    """Return (seconds to result line, seconds to process exit, processes left behind)."""
    tag = new_tag()
    env = dict(env, **{TAG_VAR: tag})
    import tempfile

    ferr = tempfile.TemporaryFile("w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-c", snippet], stdout=subprocess.PIPE, stderr=ferr,
        stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT, text=True,
        start_new_session=True)
    t_result = None
    deadline = t0 + timeout
    try:
        # readline blocks; guard with an alarm-free approach: poll via select
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = ""
        while t_result is None:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("no result within %.0f s" % timeout)
            if not sel.select(timeout=left):
                continue
            line = proc.stdout.readline()
            if line == "":
                raise RuntimeError("process exited (rc=%s) before printing a result" % proc.wait())
            buf += line
            if line.startswith(RESULT_MARKER):
                t_result = time.perf_counter() - t0
                if line.split()[1] != "1":
                    raise RuntimeError("wrong result: %r" % line)
        # don't read stdout to EOF: a daemon left behind could hold the pipe
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        t_exit = time.perf_counter() - t0
        return t_result, t_exit, cleanup(proc, tag)
    except BaseException as e:
        cleanup(proc, tag, grace=0)
        proc.wait()
        ferr.seek(0)
        tail = ferr.read().strip().splitlines()[-1:]
        if tail and isinstance(e, Exception):
            raise RuntimeError(f"{e}; stderr: {tail[0]}") from e
        raise
    finally:
        cleanup(proc, tag, grace=0)  # anything this run started and left behind
        proc.stdout.close()
        ferr.close()


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------
def system_env(system):
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    if system == "starburst":
        # starburst is imported from the work tree
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if system == "ray":
        # no usage-stats reporting thread (there is no outside network here)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def run_worker_subprocess(system, python, args, timeout):
    cmd = [python, os.path.abspath(__file__), "--system", system, "--json",
           "--async-n", str(args.async_n), "--async-runs", str(args.async_runs),
           "--sync-iters", str(args.sync_iters), "--array-reps", str(args.array_reps),
           "--warmup-sync", str(args.warmup_sync), "--warmup-async", str(args.warmup_async),
           "--actor-n", str(args.actor_n), "--actor-runs", str(args.actor_runs)]
    import tempfile

    tag = new_tag()
    env = dict(system_env(system), **{TAG_VAR: tag})
    t0 = time.perf_counter()
    # files, not pipes: a daemon left behind by a system must not block us
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        proc = subprocess.Popen(cmd, stdout=fout, stderr=None if args.verbose else ferr,
                                stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT,
                                text=True, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # end what this run started and left behind (daemons) -- and say so
        left_behind = cleanup(proc, tag, grace=0 if timed_out else 3.0)
        proc.wait()
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    if timed_out:
        return {"system": system, "ok": False, "error": f"timed out after {timeout:.0f} s",
                "stderr_tail": err[-2000:]}
    wall = time.perf_counter() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(JSON_MARKER):
            res = json.loads(line[len(JSON_MARKER):])
            res["worker_wall_s"] = wall
            res["left_behind"] = left_behind
            return res
    return {"system": system, "ok": False,
            "error": f"worker exited rc={proc.returncode} without JSON",
            "stderr_tail": (err or "")[-3000:], "stdout_tail": out[-1000:]}


def check_available(system, python):
    """Return None if usable, else a message."""
    if not os.path.exists(python):
        if system == "ray":
            return (f"Ray venv not found ({python}). Create it with:\n"
                    f"    bash benchmarks/setup_ray.sh\n"
                    f"  (= python3 -m venv benchmarks/.venv-ray && "
                    f"benchmarks/.venv-ray/bin/pip install ray numpy)")
        return f"interpreter not found: {python}"
    mod = {"starburst": "starburst", "ray": "ray", "processpool": "concurrent.futures"}[system]
    try:
        p = subprocess.run([python, "-c", f"import {mod}, numpy"], env=system_env(system),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return f"`import {mod}` timed out"
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        msg = f"`import {mod}, numpy` failed with {python}: {tail}"
        if system == "ray":
            msg += "\n  (re)create the venv with: bash benchmarks/setup_ray.sh"
        return msg
    return None


def fmt_time(s):
    if s is None or s != s:
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms" if s >= 0.01 else f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def speedup(sb, other, higher_is_better):
    """>1 means starburst is better."""
    if sb is None or other is None or not sb or not other:
        return None
    return sb / other if higher_is_better else other / sb


def fmt_ratio(x, ref=False):
    if x is None:
        return "n/a"
    return f"{x:.2f}x" + (" (ref)" if ref else "")


METRICS = [
    # key, label, kind, higher_is_better, goal (min speedup vs Ray), goal text. The goals are the
    # latest issue's (15, interactive latency): b, c, f, h were raised there.
    ("cold_start_s", "a. start -> first result", "time", False, 5.0, ">= 5x faster"),
    ("sync_p50_s", "b. sync round trip p50", "time", False, 1.2, ">= 1.2x"),
    ("sync_p99_s", "b. sync round trip p99", "time", False, None, ""),
    ("async_tps", "c. async throughput", "rate", True, 3.0, ">= 3x"),
    ("putget_s", "d. 128 MiB put+get", "time", False, 1.0, "no slower (>= 1x)"),
    ("task_array_s", "e. 128 MiB put->task(a+1)->get", "time", False, None, "(no goal)"),
    ("actor_sync_cps", "f. sync actor calls", "rate", True, 2.0, ">= 2x"),
    ("actor_async_cps", "g. async actor calls", "rate", True, 2.0, ">= 2x"),
    ("actor_sync_rt_p50_s", "h. actor call round trip p50", "time", False, 1.2, ">= 1.2x"),
]


def render_table(results, systems):
    sb = results.get("starburst", {})
    ray = results.get("ray", {})
    pp = results.get("processpool", {})
    cols = ["measurement"] + list(systems) + ["sb vs Ray", "sb vs Pool", "goal vs Ray", "met?"]
    rows = []
    for key, label, kind, hib, goal, goal_txt in METRICS:
        cells = [label]
        for s in systems:
            v = results.get(s, {}).get(key)
            cells.append(fmt_rate(v) if kind == "rate" else fmt_time(v))
        r_ray = speedup(sb.get(key), ray.get(key), hib)
        r_pp = speedup(sb.get(key), pp.get(key), hib)
        cells.append(fmt_ratio(r_ray))
        cells.append(fmt_ratio(r_pp, ref=(key == "putget_s")))
        cells.append(goal_txt)
        if goal is None:
            cells.append("")
        elif r_ray is None:
            cells.append("n/a")
        else:
            cells.append("yes" if r_ray >= goal else "NO")
        rows.append(cells)
    return _common.format_table(cols, rows)


def orchestrate(args):
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            sys.exit(f"unknown system {s!r}; choose from {','.join(SYSTEMS)}")
    pythons = {"starburst": args.starburst_python, "ray": args.ray_python,
               "processpool": args.starburst_python}
    print(f"starburst core benchmarks  ({'QUICK smoke run' if args.quick else 'full run'})  "
          f"{_dt.datetime.now().isoformat(timespec='seconds')}")
    print(_common.host_line())
    la = os.getloadavg()[0]
    if la > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {la:.2f} at start on {os.cpu_count()} cpus: other work is "
              "running; figures will be noisy (and slower for whichever system it hits).")
    print("note: shared/noisy machine -> every figure is a median over repetitions, after "
          "warm-ups; cold starts are interleaved across systems.")
    print(f"config: cold starts {args.cold_runs} (+1 warm-up each), sync {args.sync_iters} "
          f"(+{args.warmup_sync} warm-up), async N={args.async_n} x {args.async_runs} runs "
          f"(+{args.warmup_async} warm-up), 128 MiB x {args.array_reps} (+1 warm-up), "
          f"actor calls N={args.actor_n} x {args.actor_runs} runs (f, g; same warm-ups; "
          f"h: {args.sync_iters} round trips)")
    print()

    available = []
    skipped = {}
    for s in systems:
        msg = check_available(s, pythons[s])
        if msg:
            skipped[s] = msg
            print(f"SKIP {s}: {msg}\n")
        else:
            available.append(s)

    results = {s: {"system": s, "ok": False, "error": skipped[s]} for s in skipped}

    # ---- a. cold start, interleaved ----------------------------------------
    cold = {s: [] for s in available}
    cold_exit = {s: [] for s in available}
    cold_left = {s: 0 for s in available}
    cold_err = {}
    base = []
    benv = dict(os.environ)
    print("a. cold start (fresh interpreter per run) ...", flush=True)
    for rep in range(args.cold_runs + 1):  # rep 0 = warm-up (file cache)
        try:
            t, _, _ = cold_start_once(args.starburst_python, COLD_SNIPPETS["baseline"], benv, 60)
            if rep:
                base.append(t)
        except Exception as e:  # pragma: no cover
            print(f"  baseline failed: {e}")
        for s in available:
            if s in cold_err:
                continue
            try:
                t, te, left = cold_start_once(pythons[s], COLD_SNIPPETS[s], system_env(s), args.cold_timeout)
                cold_left[s] += left
                if rep:
                    cold[s].append(t)
                    cold_exit[s].append(te)
                if args.verbose:
                    print(f"  {s} run {rep}: result {t:.3f} s, exit {te:.3f} s", flush=True)
            except Exception as e:
                cold_err[s] = f"{type(e).__name__}: {e}"
                print(f"  {s} cold start failed: {cold_err[s]}", flush=True)

    # ---- b-h: one worker subprocess per system -----------------------------
    for s in available:
        print(f"b-h. {s} worker ...", flush=True)
        r = run_worker_subprocess(s, pythons[s], args, args.worker_timeout)
        if not r.get("ok"):
            print(f"  {s} worker FAILED: {r.get('error', '?').strip().splitlines()[-1] if r.get('error') else '?'}")
            tail = (r.get("stderr_tail") or r.get("error") or "").strip().splitlines()[-12:]
            for line in tail:
                print("  | " + line)
        if cold[s]:
            r["cold_start_s"] = median(cold[s])
            r["cold_start_all_s"] = cold[s]
            r["cold_exit_s"] = median(cold_exit[s])
        if s in cold_err:
            r["cold_start_error"] = cold_err[s]
        if cold_left.get(s):
            r["cold_left_behind"] = cold_left[s]
        results[s] = r

    # ---- report ------------------------------------------------------------
    print()
    print("Results (medians; 'sb vs X' > 1 means starburst is better: "
          "X_time / sb_time, or sb_rate / X_rate)")
    print()
    print(render_table(results, systems))
    print()
    notes = []
    if base:
        notes.append(f"bare interpreter start -> print (project python): {fmt_time(median(base))}")
    for s in systems:
        r = results.get(s, {})
        bits = []
        if r.get("version"):
            bits.append(f"version {r['version']}")
        if r.get("init_s") is not None:
            bits.append(f"init() in warm process {fmt_time(r['init_s'])}")
        if r.get("cold_exit_s") is not None:
            bits.append(f"cold run incl. shutdown+exit {fmt_time(r['cold_exit_s'])}")
        if r.get("put_s") is not None:
            what = "dumps/loads" if s == "processpool" else "put/get"
            bits.append(f"128 MiB {what} {fmt_time(r['put_s'])} / {fmt_time(r['get_s'])}")
        if r.get("local_add_one_s") is not None:
            bits.append(f"local a+1 floor {fmt_time(r['local_add_one_s'])}")
        for k, lab in (("putget_all_s", "d reps"), ("task_array_all_s", "e reps")):
            if r.get(k):
                bits.append(f"{lab} " + ", ".join(f"{x * 1e3:.0f}" for x in r[k]) + " ms")
        if r.get("async_tps_all"):
            bits.append("async runs " + ", ".join(f"{x:,.0f}" for x in r["async_tps_all"]))
        for k, lab in (("actor_sync_cps_all", "f runs"), ("actor_async_cps_all", "g runs")):
            if r.get(k):
                bits.append(f"{lab} " + ", ".join(f"{x:,.0f}" for x in r[k]) + " calls/s")
        if r.get("actor_sync_rt_p99_s") is not None:
            bits.append(f"h p99 {fmt_time(r['actor_sync_rt_p99_s'])}")
        if r.get("actor_async_rt_p50_s") is not None:
            bits.append(f"async-actor round trip p50 {fmt_time(r['actor_async_rt_p50_s'])}")
        if r.get("actor_sync_start_s") is not None and r.get("actor_async_start_s") is not None:
            bits.append(f"actor start -> first call back: sync {fmt_time(r['actor_sync_start_s'])}, "
                        f"async {fmt_time(r['actor_async_start_s'])}")
        if s == "processpool" and r.get("max_workers"):
            bits.append(f"max_workers={r['max_workers']} start_method={r.get('start_method')}")
        if r.get("left_behind"):
            bits.append(f"LEFT {r['left_behind']} process(es) running after the worker exited "
                        "(ended by the harness)")
        if r.get("cold_left_behind"):
            bits.append(f"LEFT {r['cold_left_behind']} process(es) running after its cold-start "
                        "runs exited (ended by the harness)")
        if not r.get("ok"):
            err = (r.get("error") or "failed").strip().splitlines()
            bits.append("ERROR: " + (err[-1] if err else "?"))
        if r.get("cold_start_error"):
            bits.append("cold start ERROR: " + r["cold_start_error"])
        if bits:
            notes.append(f"{s}: " + "; ".join(bits))
    notes.append("d for processpool is pickle.dumps+loads of the array (no object store): "
                 "a reference figure, marked (ref).")
    notes.append("e = put(arr) -> task returning a+1 (a new 128 MiB array) -> get; for "
                 "processpool: submit(add_one, arr).result() (array pickled both ways).")
    notes.append("f-h: one actor, default options; f/g = N calls submitted in a loop, then get "
                 "all (calls/s); h = call + get one at a time on the sync actor. processpool: "
                 "n/a (no actors).")
    notes.append(f"load avg at end: {_common.fmt_loads()}")
    for n in notes:
        print("  - " + n)

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"date": _dt.datetime.now().isoformat(timespec="seconds"),
                       "cpus": os.cpu_count(), "quick": args.quick,
                       "results": results}, f, indent=2, default=str)
        print(f"\nJSON written to {args.json_out}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fast smoke run (fewer repetitions, smaller N)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="comma-separated subset of: " + ",".join(SYSTEMS))
    p.add_argument("--ray-python", default=DEFAULT_RAY_PYTHON, help="interpreter that has ray")
    p.add_argument("--starburst-python", default=sys.executable,
                   help="interpreter for starburst and processpool (default: this one)")
    p.add_argument("--async-n", type=int, default=None, help="tasks per async run (default 5000, quick 500)")
    p.add_argument("--async-runs", type=int, default=None, help="timed async runs (default 3, quick 1)")
    p.add_argument("--sync-iters", type=int, default=None, help="sync round trips (default 300, quick 50)")
    p.add_argument("--array-reps", type=int, default=None, help="timed 128 MiB reps (default 5, quick 2)")
    p.add_argument("--actor-n", type=int, default=None,
                   help="calls per actor throughput run, f and g (default 5000, quick 500)")
    p.add_argument("--actor-runs", type=int, default=None, help="timed actor throughput runs (default 3, quick 1)")
    p.add_argument("--cold-runs", type=int, default=None, help="timed cold starts (default 5, quick 2)")
    p.add_argument("--warmup-sync", type=int, default=None, help="sync warm-up calls (default 50, quick 10)")
    p.add_argument("--warmup-async", type=int, default=None, help="async warm-up batch (default 500, quick 100)")
    p.add_argument("--cold-timeout", type=float, default=120.0, help="seconds per cold start")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per system worker")
    p.add_argument("--json-out", default=None, help="also write all results as JSON here")
    p.add_argument("--verbose", "-v", action="store_true", help="show worker progress (stderr)")
    # worker mode
    p.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    q = args.quick
    defaults = dict(async_n=(500, 5000), async_runs=(1, 3), sync_iters=(50, 300), array_reps=(2, 5),
                    cold_runs=(2, 5), warmup_sync=(10, 50), warmup_async=(100, 500),
                    actor_n=(500, 5000), actor_runs=(1, 3),
                    worker_timeout=(300.0, 900.0))
    for k, (qv, fv) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, qv if q else fv)

    if args.system:
        cfg = dict(async_n=args.async_n, async_runs=args.async_runs, sync_iters=args.sync_iters,
                   array_reps=args.array_reps, warmup_sync=args.warmup_sync,
                   warmup_async=args.warmup_async, actor_n=args.actor_n,
                   actor_runs=args.actor_runs)
        try:
            res = run_worker(args.system, cfg)
        except Exception:
            res = {"system": args.system, "ok": False, "error": traceback.format_exc()}
        line = JSON_MARKER + json.dumps(res, default=str)
        if args.json:
            print(line, flush=True)
        else:
            print(json.dumps(res, indent=2, default=str))
        return 0 if res.get("ok") else 1
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
