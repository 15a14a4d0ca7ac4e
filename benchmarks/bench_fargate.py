#!/usr/bin/env python3
"""Fargate benchmarks over the offline rehearsal (moto + SeaweedFS + fake ECS agent + latency proxy).

One command runs everything and prints one table with absolute figures, baselines and ratios:

    .venv/bin/python benchmarks/bench_fargate.py            # full run (~6 min)
    .venv/bin/python benchmarks/bench_fargate.py --quick    # smoke run (~1.5 min)

a. sync task round trip over a 40 ms link (head <-> node through tests/rehearsal's LatencyProxy):
   p50 / p90 of ``get(stamp.remote())`` one at a time (a trivial task returning ``time.time()``, which
   splits the round trip into its two directions); goal: p50 within 5 ms of the round trip.
b. 10,000 tasks of ``time.sleep(0.001)`` on 4 nodes x 2 executors over the 40 ms link, and the same
   with no added latency; goal: >= 80 % of the ideal 8 executors x 1000 tasks/s.
c. a 1 GiB float64 array: ``put`` -> task returning ``a + 1`` -> ``get``, through SeaweedFS, next to
   a plain boto3 transfer-manager upload/download of the same bytes from the same process
   (goal: >= 90 % of its GB/s); and the bytes that crossed gRPC (head <-> node) vs S3.

How it works: this process (the "bench" process) starts SeaweedFS and a moto server (each its own
process), prepares the account (``tests/rehearsal/fargate.Rehearsal``) and, for each scenario, a
``FakeEcsAgent`` (its latency proxies run as threads in this process: they are the network). The
driver runs in a subprocess (``--driver <scenario>``) that calls ``starburst.init(cluster="fargate")``
like a user's script, so no proxy or moto thread competes with the driver for its GIL. The driver
asks this process for a snapshot (``BENCH_SNAP label`` on stdout, ``OK`` back on stdin) at the edges
of each timed region; a snapshot holds the proxies' byte counts and the CPU time of every process
of the run (head, nodes, executors, driver, proxies, SeaweedFS, moto), found by a tag in their
environment (``BENCH_FARGATE_TAG``). Everything is stopped in ``finally`` blocks; whatever still
carries the tag at the end is reported as LEFT and ended by pid.

See benchmarks/README.md ("Fargate rehearsal benchmarks") for the definitions and results.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import io
import json
import math
import mmap
import os
import pathlib
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

import _common
from _common import fmt_rate, median, percentile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
TESTS_DIR = os.path.join(REPO_ROOT, "tests")
TAG_VAR = "BENCH_FARGATE_TAG"
SNAP_MARKER = "BENCH_SNAP "
RESULT_MARKER = "BENCH_RESULT:"
MiB = 1024 * 1024
GiB = 1024 * MiB
GB = 1e9  # GB/s below means 10^9 bytes per second

LINK_MS = 40.0


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------
def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Task bodies (module level: cloudpickle ships them by value from the driver's __main__)
# --------------------------------------------------------------------------
def stamp():
    """a's trivial task: returns the wall clock when it ran (same machine: splits the round trip)."""
    return time.time()


def sleep_1ms():
    """b's task: sleeps 1 ms (not a busy loop, so the executors don't need the cores)."""
    time.sleep(0.001)
    return os.getpid()


def add_one(a):
    """c's task: a NEW array a + 1 (the data must reach the task, a fresh result must come back)."""
    return a + 1


# --------------------------------------------------------------------------
# Driver side (runs in the subprocess: python bench_fargate.py --driver <scenario> --cfg <json>)
# --------------------------------------------------------------------------
def snap(label):
    """Ask the bench process to record a snapshot (proxy bytes, CPU times) now; wait for it."""
    print(f"{SNAP_MARKER}{label}", flush=True)
    reply = sys.stdin.readline()
    if reply.strip() != "OK":
        raise RuntimeError(f"bench process answered {reply!r} to snapshot {label!r}")


def init_cluster(cfg, res):
    import starburst

    t0 = time.perf_counter()
    starburst.init(cluster="fargate", workers=cfg["workers"], cpu=cfg["cpu"], memory=cfg["memory"],
                   lease=cfg.get("lease", 60))
    res["init_s"] = time.perf_counter() - t0
    deadline = time.monotonic() + 120
    while len(starburst.nodes()) < cfg["workers"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(starburst.nodes())} of {cfg['workers']} nodes after 120 s")
        time.sleep(0.1)
    res["nodes_ready_s"] = time.perf_counter() - t0
    res["cluster_cpus"] = starburst.cluster_resources().get("CPU")
    log(f"init {res['init_s']:.2f} s, {cfg['workers']} nodes ready after {res['nodes_ready_s']:.2f} s, "
        f"cluster CPUs {res['cluster_cpus']}")


def measure_round_trips(cfg, res, key):
    import starburst

    r_stamp = starburst.remote(stamp)
    for _ in range(cfg["rtt_warmup"]):
        starburst.get(r_stamp.remote(), timeout=60)
    lat, out, back = [], [], []
    snap(f"{key}-start")
    for _ in range(cfg["rtt_iters"]):
        w0 = time.time()
        t0 = time.perf_counter()
        ran = starburst.get(r_stamp.remote(), timeout=60)
        lat.append(time.perf_counter() - t0)
        w1 = time.time()
        out.append(ran - w0)   # submit -> the task runs (driver -> head -> node -> executor)
        back.append(w1 - ran)  # the task runs -> the driver has the result
    snap(f"{key}-end")
    res[key] = {"n": len(lat), "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90),
                "p99_s": percentile(lat, 99), "min_s": min(lat), "mean_s": sum(lat) / len(lat),
                "out_p50_s": percentile(out, 50), "back_p50_s": percentile(back, 50)}
    log(f"{key}: p50 {res[key]['p50_s'] * 1e3:.2f} ms, p90 {res[key]['p90_s'] * 1e3:.2f} ms, "
        f"min {res[key]['min_s'] * 1e3:.2f} ms (n={len(lat)}); out {res[key]['out_p50_s'] * 1e3:.2f} ms, "
        f"back {res[key]['back_p50_s'] * 1e3:.2f} ms (p50s)")


def measure_throughput(cfg, res, key):
    import starburst

    r_sleep = starburst.remote(sleep_1ms)
    # What time.sleep(0.001) really takes here (the ideal assumes 1 ms).
    sl = []
    for _ in range(300):
        t0 = time.perf_counter()
        time.sleep(0.001)
        sl.append(time.perf_counter() - t0)
    res["sleep_1ms_mean_s"] = sum(sl) / len(sl)
    # Warm-up: every executor started and has run tasks; the scheduler has seen the duration.
    starburst.get([r_sleep.remote() for _ in range(cfg["tp_warmup"])], timeout=300)
    n = cfg["tp_n"]
    runs = []
    for i in range(cfg["tp_runs"]):
        snap(f"{key}{i}-start")
        t0 = time.perf_counter()
        refs = [r_sleep.remote() for _ in range(n)]
        t_sub = time.perf_counter() - t0
        pids = starburst.get(refs, timeout=600)
        dt = time.perf_counter() - t0
        snap(f"{key}{i}-end")
        assert len(pids) == n
        runs.append({"n": n, "wall_s": dt, "submit_s": t_sub, "rate": n / dt,
                     "executors_used": len(set(pids))})
        log(f"{key} run {i}: {n} tasks in {dt:.2f} s (submit {t_sub:.2f} s) = {n / dt:,.0f} tasks/s, "
            f"{len(set(pids))} executors used")
        del refs, pids
    res[key] = {"runs": runs, "rate": median([r["rate"] for r in runs]), "n": n}


class MemFile(io.RawIOBase):
    """A seekable file over ``size`` bytes of memory (MemReader reads them, MemWriter writes them)."""

    def __init__(self, size):
        self.size = size
        self.pos = 0

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        base = (0, self.pos, self.size)[whence]
        self.pos = max(0, base + offset)
        return self.pos


class MemReader(MemFile):
    """A read-only, seekable file over a buffer (the array's own memory: no copy up front)."""

    def __init__(self, buf):
        self.view = memoryview(buf).cast("B")
        super().__init__(self.view.nbytes)

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.view.nbytes - self.pos)
        if n <= 0:
            return 0
        memoryview(b).cast("B")[:n] = self.view[self.pos:self.pos + n]
        self.pos += n
        return n


class MemWriter(MemFile):
    """A writable, seekable file over a fresh anonymous mmap (like starburst's download buffer)."""

    def __init__(self, size):
        self.buf = mmap.mmap(-1, size)
        super().__init__(size)

    def writable(self):
        return True

    def write(self, b):
        view = memoryview(b).cast("B")
        self.buf[self.pos:self.pos + view.nbytes] = view
        self.pos += view.nbytes
        return view.nbytes


def measure_arrays(cfg, res):
    import boto3
    import numpy as np
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    import starburst
    from starburst.serialization import deserialize, serialize
    from starburst.store.s3 import S3Store

    size = cfg["array_mib"] * MiB
    arr = np.arange(size // 8, dtype=np.float64)
    assert arr.nbytes == size
    r_add = starburst.remote(add_one)
    client_store = starburst._runtime.peek_client().store
    bucket = client_store.bucket
    prefix = client_store.prefix  # the cluster's prefix: starburst's objects live here
    bench_prefix = f"bench-fargate-{uuid.uuid4().hex[:8]}"
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]

    # ---- the local cost of a + 1 (the node computes it; no baseline does) ----
    floor = []
    for _ in range(3):
        t0 = time.perf_counter()
        tmp = arr + 1
        floor.append(time.perf_counter() - t0)
        del tmp
    res["local_add_one_s"] = median(floor)
    log(f"local a+1 on {cfg['array_mib']} MiB: {res['local_add_one_s'] * 1e3:.0f} ms")

    # ---- baseline: plain boto3 transfer manager (boto3's defaults: 8 MiB parts, 10 threads) ----
    tconfig = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                             max_concurrency=cfg["baseline_concurrency"])
    s3 = boto3.Session().client("s3", config=Config(
        max_pool_connections=max(10, cfg["baseline_concurrency"] + 2)))
    res["baseline_config"] = {"multipart_chunksize": 8 * MiB,
                              "max_concurrency": cfg["baseline_concurrency"],
                              "endpoint": endpoint}

    def baseline_once(tag):
        key = f"{bench_prefix}/boto3-{tag}"
        snap(f"cb{tag}-start")
        t0 = time.perf_counter()
        s3.upload_fileobj(MemReader(arr.data), bucket, key, Config=tconfig)
        t1 = time.perf_counter()
        sink = MemWriter(size)
        s3.download_fileobj(bucket, key, sink, Config=tconfig)
        t2 = time.perf_counter()
        snap(f"cb{tag}-end")
        out = np.frombuffer(sink.buf, dtype=np.float64)
        assert out[0] == 0.0 and out[-1] == arr[-1] and out[size // 16] == arr[size // 16]
        del out
        sink.buf.close()
        s3.delete_object(Bucket=bucket, Key=key)
        return {"up_s": t1 - t0, "down_s": t2 - t1}

    # ---- starburst's S3Store alone (no cluster), the same bytes from the same process ----
    store = S3Store(f"s3://{bucket}/{bench_prefix}")

    def store_once(tag):
        key = f"store-{tag}"
        ser = serialize(arr)
        snap(f"cs{tag}-start")
        t0 = time.perf_counter()
        store.put(key, ser)
        t1 = time.perf_counter()
        view = store.get(key)
        t2 = time.perf_counter()
        snap(f"cs{tag}-end")
        out = deserialize(view)
        assert out[0] == 0.0 and out[-1] == arr[-1]
        del out, view
        store.delete(key)
        return {"up_s": t1 - t0, "down_s": t2 - t1, "bytes": ser.size}

    # ---- starburst: put -> task(a + 1) -> get ----
    def object_sizes(*refs):
        sizes = {}
        pages = client_store.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/")
        for page in pages:
            for o in page.get("Contents", []):
                sizes[o["Key"].rsplit("/", 1)[-1]] = o["Size"]
        return [sizes.get(r.hex()) for r in refs]

    def starburst_once(tag, timed=True):
        if timed:
            snap(f"c{tag}-start")
        t0 = time.perf_counter()
        ref = starburst.put(arr)
        t1 = time.perf_counter()
        out_ref = r_add.remote(ref)
        ready, _ = starburst.wait([out_ref], timeout=600)
        assert ready, "the a+1 task did not finish in 600 s"
        t2 = time.perf_counter()
        out = starburst.get(out_ref, timeout=600)
        t3 = time.perf_counter()
        if timed:
            snap(f"c{tag}-end")
        assert out.shape == arr.shape and out[0] == 1.0 and out[-1] == arr[-1] + 1
        assert out[size // 16] == arr[size // 16] + 1
        in_size, out_size = object_sizes(ref, out_ref)
        del out, out_ref, ref
        return {"put_s": t1 - t0, "task_s": t2 - t1, "get_s": t3 - t2, "total_s": t3 - t0,
                "arg_object_bytes": in_size, "result_object_bytes": out_size}

    # Warm-up of every path (connections, thread pools, the function on the node) with 16 MiB.
    small = np.arange(2 * MiB, dtype=np.float64)
    ref = starburst.put(small)
    assert starburst.get(r_add.remote(ref), timeout=120)[-1] == small[-1] + 1
    del ref
    key = f"{bench_prefix}/warm"
    s3.upload_fileobj(MemReader(small.data), bucket, key, Config=tconfig)
    s3.download_fileobj(bucket, key, MemWriter(small.nbytes), Config=tconfig)
    s3.delete_object(Bucket=bucket, Key=key)
    store.put("warm", serialize(small))
    store.get("warm")
    store.delete("warm")

    reps = {"boto3": [], "store": [], "starburst": []}
    try:
        for i in range(cfg["array_reps"]):  # interleaved, so drift hits all alike
            b = baseline_once(i)
            reps["boto3"].append(b)
            log(f"rep {i} boto3: up {size / b['up_s'] / GB:.3f} GB/s ({b['up_s']:.2f} s), "
                f"down {size / b['down_s'] / GB:.3f} GB/s ({b['down_s']:.2f} s)")
            s = store_once(i)
            reps["store"].append(s)
            log(f"rep {i} S3Store: put {size / s['up_s'] / GB:.3f} GB/s ({s['up_s']:.2f} s), "
                f"get {size / s['down_s'] / GB:.3f} GB/s ({s['down_s']:.2f} s)")
            r = starburst_once(i)
            reps["starburst"].append(r)
            log(f"rep {i} starburst: put {r['put_s']:.2f} s, task {r['task_s']:.2f} s, "
                f"get {r['get_s']:.2f} s, total {r['total_s']:.2f} s "
                f"(objects {r['arg_object_bytes']} / {r['result_object_bytes']} B)")
    finally:
        store.close()
    res["array"] = {"bytes": size, "reps": reps}


def driver_main(scenario, cfg):
    import starburst

    res = {"scenario": scenario, "ok": True, "cfg": cfg, "driver_pid": os.getpid()}
    try:
        init_cluster(cfg, res)
        if scenario == "rtt":
            measure_round_trips(cfg, res, "rtt")
        elif scenario == "tput":
            measure_throughput(cfg, res, "tp")
            if cfg.get("rtt_iters"):
                measure_round_trips(cfg, res, "rtt")
        elif scenario == "array":
            measure_arrays(cfg, res)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
    except BaseException:
        res["ok"] = False
        res["error"] = traceback.format_exc()
    finally:
        if not _common.timed_shutdown(res, starburst.shutdown, catch=BaseException):  # reported in the result
            res["ok"] = False
    print(RESULT_MARKER + json.dumps(res, default=str), flush=True)
    return 0 if res["ok"] else 1


# --------------------------------------------------------------------------
# Bench side: servers, agents, snapshots
# --------------------------------------------------------------------------
def _category(cmdline, pid, driver_pid):
    if pid == driver_pid:
        return "driver"
    if "starburst.head" in cmdline:
        return "head"
    if "starburst.node.executor" in cmdline:
        return "executors"
    if "starburst.node" in cmdline:
        return "nodes"
    if "weed" in cmdline:
        return "seaweedfs"
    if "moto" in cmdline:
        return "moto"
    return "other"


CATEGORIES = ("driver", "head", "nodes", "executors", "bench (proxies, agent)", "seaweedfs", "moto",
              "other")


class Snapshotter:
    """CPU seconds per category of process (by the run's tag) and the proxies' byte counts."""

    def __init__(self, tag):
        import psutil

        self.psutil = psutil
        self.tag = tag
        self._cmd: dict[int, str] = {}

    def take(self, agent, driver_pid):
        ps = self.psutil
        cpu = collections.defaultdict(float)
        tagged = set(_common.tagged_pids(TAG_VAR, self.tag))
        # Everyone else's processes too (by pid), to name what else used the machine meanwhile.
        others = {}
        for p in ps.process_iter(["pid", "name", "cpu_times"]):
            if p.info["pid"] in tagged or p.info["pid"] == os.getpid() or p.info["cpu_times"] is None:
                continue
            t = p.info["cpu_times"]
            others[p.info["pid"]] = (p.info["name"], t.user + t.system)
        for pid in tagged:
            try:
                p = ps.Process(pid)
                cmd = self._cmd.get(pid)
                if cmd is None:
                    cmd = self._cmd[pid] = " ".join(p.cmdline())
                t = p.cpu_times()
                cpu[_category(cmd, pid, driver_pid)] += t.user + t.system
            except (ps.NoSuchProcess, ps.AccessDenied):
                continue
        t = ps.Process().cpu_times()
        cpu["bench (proxies, agent)"] += t.user + t.system
        m = ps.cpu_times()
        machine_busy = m.user + m.nice + m.system + m.irq + m.softirq
        up = down = 0
        if agent is not None:
            for r in agent.nodes.values():
                if r.proxy is not None:
                    up += r.proxy.bytes_up
                    down += r.proxy.bytes_down
        return {"t": time.perf_counter(), "cpu": dict(cpu), "machine_busy_s": machine_busy,
                "steal_s": getattr(m, "steal", 0.0),
                "proxy_up": up, "proxy_down": down, "others": others}


def snap_delta(snaps, label):
    a, b = snaps.get(f"{label}-start"), snaps.get(f"{label}-end")
    if a is None or b is None:
        return None
    wall = b["t"] - a["t"]
    cpu = {k: b["cpu"].get(k, 0.0) - a["cpu"].get(k, 0.0) for k in CATEGORIES}
    cpu = {k: v for k, v in cpu.items() if v > 0.0005}
    ours = sum(cpu.values())
    machine = b["machine_busy_s"] - a["machine_busy_s"]
    top = collections.defaultdict(float)
    for pid, (name, t) in b.get("others", {}).items():
        top[name] += t - a.get("others", {}).get(pid, (name, 0.0))[1]
    top = sorted(((n, round(v, 2)) for n, v in top.items() if v >= 0.05), key=lambda x: -x[1])[:4]
    return {"wall_s": wall, "cpu_s": cpu, "cpu_total_s": ours, "machine_busy_s": machine,
            "others_busy_s": max(0.0, machine - ours), "others_top": top,
            "steal_s": b.get("steal_s", 0.0) - a.get("steal_s", 0.0),
            "grpc_up": b["proxy_up"] - a["proxy_up"], "grpc_down": b["proxy_down"] - a["proxy_down"]}


class MotoProcess:
    """``python -m moto.server`` on 127.0.0.1 (its own process: its request handling doesn't share
    a GIL with the proxies)."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.proc = None
        self.endpoint = None

    def start(self, timeout=60.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                          str(port)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return self.endpoint
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not ready after {timeout:g} s") from None
                time.sleep(0.1)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def measure_link(rtt_ms, n):
    """Round trips of a 64-byte ping-pong through a LatencyProxy alone (the network's own figure)."""
    from rehearsal.latency_proxy import LatencyProxy

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def echo():
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while not stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    lat = []
    try:
        with LatencyProxy("127.0.0.1", 0, "127.0.0.1", srv.getsockname()[1], rtt_ms=rtt_ms) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port)) as c:
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                msg = b"x" * 64
                for i in range(n + 5):
                    t0 = time.perf_counter()
                    c.sendall(msg)
                    got = 0
                    while got < len(msg):
                        got += len(c.recv(65536))
                    if i >= 5:
                        lat.append(time.perf_counter() - t0)
    finally:
        stop.set()
        srv.close()
        th.join(timeout=5)
    return {"n": len(lat), "p50_s": percentile(lat, 50), "p90_s": percentile(lat, 90), "min_s": min(lat)}


def run_scenario(name, scenario, latency_ms, cfg, rehearsal, snapshotter, workdir, args):
    """One cluster: an agent with the given latency, a driver subprocess running ``scenario``."""
    log(f"== {name}: {scenario}, workers={cfg['workers']} cpu={cfg['cpu']} memory={cfg['memory']}, "
        f"link {latency_ms:g} ms")
    snaps = {}
    res = None
    env = dict(os.environ)
    err_path = workdir / f"driver-{name}.log"
    t_start = time.perf_counter()
    with rehearsal.agent(workdir / f"nodes-{name}", latency_ms=latency_ms) as agent:
        link = None
        if scenario == "rtt" and latency_ms > 0:
            # The link's own round trip under the same conditions (the agent polling moto in this
            # process, as it does while the driver runs).
            time.sleep(1.0)
            link = measure_link(latency_ms, args.link_pings)
            log(f"link (proxy alone, agent polling): p50 {link['p50_s'] * 1e3:.2f} ms, "
                f"p90 {link['p90_s'] * 1e3:.2f} ms")
        with open(err_path, "w+") as ferr:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--driver", scenario, "--cfg", json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if args.verbose else ferr,
                env=env, cwd=REPO_ROOT, text=True, bufsize=1, start_new_session=True)
            try:
                sel = selectors.DefaultSelector()
                sel.register(proc.stdout, selectors.EVENT_READ)
                deadline = time.monotonic() + args.scenario_timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"scenario {name} still running after {args.scenario_timeout:g} s")
                    if not sel.select(timeout=min(left, 5.0)):
                        continue
                    line = proc.stdout.readline()
                    if line == "":
                        break
                    if line.startswith(SNAP_MARKER):
                        label = line[len(SNAP_MARKER):].strip()
                        snaps[label] = snapshotter.take(agent, proc.pid)
                        proc.stdin.write("OK\n")
                        proc.stdin.flush()
                    elif line.startswith(RESULT_MARKER):
                        res = json.loads(line[len(RESULT_MARKER):])
                    elif args.verbose:
                        print("  | " + line.rstrip(), file=sys.stderr)
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                for stream in (proc.stdin, proc.stdout):
                    with contextlib.suppress(Exception):
                        stream.close()
            if res is None:
                ferr.seek(0)
                res = {"ok": False, "error": f"driver exited with {proc.returncode} without a result:\n"
                                             + ferr.read()[-3000:]}
        # The driver's shutdown() stopped the tasks: the agent sees StopTask and ends each node.
        try:
            agent.wait_all_exited(timeout=30)
        except TimeoutError as exc:
            res["nodes_still_running_at_close"] = str(exc).splitlines()[0]
        res["agent_errors"] = list(agent.errors)
        res["nodes_started"] = agent.started_count
    res["snaps"] = {label.rsplit("-", 1)[0]: snap_delta(snaps, label.rsplit("-", 1)[0])
                    for label in snaps if label.endswith("-start")}
    res["latency_ms"] = latency_ms
    if link is not None:
        res["link"] = link
    res["scenario_wall_s"] = time.perf_counter() - t_start
    if not res.get("ok"):
        log(f"{name} FAILED: {(res.get('error') or '?').strip().splitlines()[-1]}  (driver log: {err_path})")
    else:
        log(f"{name} done in {res['scenario_wall_s']:.1f} s (init {res.get('init_s', 0):.1f} s, "
            f"shutdown {res.get('shutdown_s', 0):.1f} s)")
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def fmt_ms(s):
    return "n/a" if s is None or math.isnan(s) else f"{s * 1e3:.1f} ms"


def fmt_gbs(x):
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f} GB/s"


def fmt_bytes(n):
    if n is None:
        return "n/a"
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def build_rows(R):
    """(measurement, starburst, baseline, ratio, goal, met?) rows, and notes."""
    rows, notes = [], []
    link = (R.get("rtt") or {}).get("link") or R.get("link_idle")
    rtt = (R.get("rtt") or {}).get("rtt")
    if rtt:
        over = rtt["p50_s"] * 1e3 - LINK_MS
        if link:
            over_link = (rtt["p50_s"] - link["p50_s"]) * 1e3
            rows.append(("a. sync round trip p50, over the link's own ping", fmt_ms(rtt["p50_s"]),
                         f"{fmt_ms(link['p50_s'])} link ping p50", f"{over_link:+.2f} ms", "<= link + 3 ms",
                         "yes" if over_link <= 3.0 else "NO"))
        rows.append(("a. sync round trip p50, over the nominal 40 ms", fmt_ms(rtt["p50_s"]), "40.0 ms nominal",
                     f"{over:+.1f} ms", "<= 40 + 5 ms", "yes" if over <= 5.0 else "NO"))
        rows.append(("a. sync round trip p90 (40 ms link)", fmt_ms(rtt["p90_s"]),
                     f"{fmt_ms(link['p90_s'])} link ping p90" if link else "",
                     f"{(rtt['p90_s'] - link['p90_s']) * 1e3:+.1f} ms" if link else "", "", ""))
    rtt0 = (R.get("tput0") or {}).get("rtt")
    if rtt0:
        rows.append(("a0. sync round trip p50 (no added latency)", fmt_ms(rtt0["p50_s"]), "", "", "", ""))
    for name, r in (("a", rtt), ("a0", rtt0)):
        if r and "out_p50_s" in r:
            notes.append(f"{name}: split of the round trip (p50s, wall clock on this machine): submit -> task "
                         f"runs {fmt_ms(r['out_p50_s'])}, task ran -> driver has the result "
                         f"{fmt_ms(r['back_p50_s'])}; min {fmt_ms(r['min_s'])}, p99 {fmt_ms(r['p99_s'])}")

    cores = os.cpu_count() or 1
    ideal = 8 * 1000.0
    machine_ideal = min(8, cores) * 1000.0
    for key, label in (("tput", "b. 1 ms tasks, 4x2 executors, 40 ms link"),
                       ("tput0", "b0. same, no added latency")):
        tp = (R.get(key) or {}).get("tp")
        if not tp:
            continue
        n = tp["n"]
        rate = tp["rate"]
        goal = "(no goal)" if key == "tput0" else ">= 80 % of ideal"
        met = "" if key == "tput0" else ("yes" if rate >= 0.8 * ideal else "NO")
        rows.append((f"{label} (N={n:,})", fmt_rate(rate), f"{fmt_rate(ideal)} ideal (8 cores)",
                     f"{rate / ideal:.0%}", goal, met))
        if key == "tput":
            rows.append((f"{label}: vs this machine's cores", fmt_rate(rate),
                         f"{fmt_rate(machine_ideal)} ({cores} cores x 1000/s)", f"{rate / machine_ideal:.0%}",
                         "", ""))
        snaps = [d for lab, d in (R[key].get("snaps") or {}).items() if lab.startswith("tp") and d]
        if snaps:
            cpu_per_task = median([d["cpu_total_s"] for d in snaps]) / n
            ceiling = cores / cpu_per_task
            rows.append((f"{label}: vs CPU ceiling here", fmt_rate(rate),
                         f"{fmt_rate(ceiling)} ({cores} cores / {cpu_per_task * 1e3:.2f} ms CPU per task)",
                         f"{rate / ceiling:.0%}", "", ""))
        if R[key].get("sleep_1ms_mean_s"):
            sl = R[key]["sleep_1ms_mean_s"]
            notes.append(f"{key}: time.sleep(0.001) takes {sl * 1e3:.3f} ms here (mean of 300): 8 executors "
                         f"doing nothing else could reach {8 / sl:,.0f}/s")

    arr = (R.get("array") or {}).get("array")
    if arr:
        size = arr["bytes"]
        reps = arr["reps"]
        mib = size // MiB
        floor = R["array"].get("local_add_one_s", 0.0)
        b_up = median([r["up_s"] for r in reps["boto3"]])
        b_down = median([r["down_s"] for r in reps["boto3"]])
        s_put = median([r["put_s"] for r in reps["starburst"]])
        s_task = median([r["task_s"] for r in reps["starburst"]])
        s_get = median([r["get_s"] for r in reps["starburst"]])
        s_total = median([r["total_s"] for r in reps["starburst"]])
        base_e2e = 4 * size / (2 * b_up + 2 * b_down) / GB
        sb_e2e = 4 * size / max(1e-9, s_total - floor) / GB
        rows.append((f"c. {mib} MiB put (driver -> S3)", fmt_gbs(size / s_put / GB),
                     f"{fmt_gbs(size / b_up / GB)} boto3 upload", f"{b_up / s_put:.0%}", ">= 90 %",
                     "yes" if b_up / s_put >= 0.9 else "NO"))
        rows.append((f"c. {mib} MiB get of the a+1 result (S3 -> driver)", fmt_gbs(size / s_get / GB),
                     f"{fmt_gbs(size / b_down / GB)} boto3 download", f"{b_down / s_get:.0%}", ">= 90 %",
                     "yes" if b_down / s_get >= 0.9 else "NO"))
        node_s3 = max(1e-9, s_task - floor - LINK_MS / 1e3)
        rows.append(("c. task leg: node reads arg, a+1, writes result", fmt_ms(s_task),
                     f"{fmt_ms(b_down + b_up)} boto3 down+up", f"{(b_down + b_up) / node_s3:.0%} (excl. a+1)",
                     "", ""))
        rows.append((f"c. put -> task(a+1) -> get, 4 x {mib} MiB via S3 (excl. a+1)", fmt_gbs(sb_e2e),
                     f"{fmt_gbs(base_e2e)} boto3 2x(up+down)", f"{sb_e2e / base_e2e:.0%}", ">= 90 %",
                     "yes" if sb_e2e / base_e2e >= 0.9 else "NO"))
        st_up = median([r["up_s"] for r in reps["store"]])
        st_down = median([r["down_s"] for r in reps["store"]])
        rows.append((f"c. S3Store alone: put / get {mib} MiB",
                     f"{size / st_up / GB:.3f} / {size / st_down / GB:.3f} GB/s",
                     f"{size / b_up / GB:.3f} / {size / b_down / GB:.3f} GB/s boto3",
                     f"{b_up / st_up:.0%} / {b_down / st_down:.0%}", "", ""))
        grpc = [R["array"]["snaps"].get(f"c{i}") for i in range(len(reps["starburst"]))]
        grpc = [g for g in grpc if g]
        if grpc:
            g = median([x["grpc_up"] + x["grpc_down"] for x in grpc])
            s3_bytes = median([2 * (r["arg_object_bytes"] or 0) + 2 * (r["result_object_bytes"] or 0)
                               for r in reps["starburst"]])
            rows.append(("c. bytes head<->node over gRPC vs via S3 (per rep)", fmt_bytes(g),
                         f"{fmt_bytes(s3_bytes)} via S3", f"{g / s3_bytes:.4%}", "array not via gRPC",
                         "yes" if g < 0.01 * s3_bytes else "NO"))
        notes.append(f"c: local a+1 on {mib} MiB (driver, subtracted where marked): {fmt_ms(floor)}; "
                     f"node's S3 rate derived from the task leg (2 x {mib} MiB / (task - a+1 - 40 ms)): "
                     f"{fmt_gbs(2 * size / node_s3 / GB)}")
        for name in ("boto3", "store", "starburst"):
            if name == "starburst":
                txt = ", ".join(f"put {r['put_s']:.2f} / task {r['task_s']:.2f} / get {r['get_s']:.2f} s"
                                for r in reps[name])
            else:
                txt = ", ".join(f"up {r['up_s']:.2f} / down {r['down_s']:.2f} s" for r in reps[name])
            notes.append(f"c reps {name}: {txt}")
    return rows, notes


def _others(d):
    """Who else used the CPU in a window (CPU seconds): named processes alive at both ends; the rest
    is processes that started or ended within the window, and the kernel."""
    if not d.get("others_busy_s"):
        return ""
    named = sum(v for _, v in d.get("others_top", []))
    bits = [f"{n} {v:g}" for n, v in d.get("others_top", [])]
    bits.append(f"short-lived/kernel {max(0.0, d['others_busy_s'] - named):.2f}")
    if d.get("steal_s", 0) > 0.05:
        bits.append(f"VM steal {d['steal_s']:.2f}")
    return " (others, CPU s: " + ", ".join(bits) + ")"


def cpu_notes(R):
    notes = []
    arr = R.get("array")
    if arr and arr.get("snaps"):
        for lab, what in (("cb", "boto3 up+down"), ("cs", "S3Store put+get"), ("c", "starburst put+task+get")):
            ds = [d for k, d in sorted(arr["snaps"].items()) if d and k[len(lab):].isdigit() and k.startswith(lab)]
            if not ds:
                continue
            d = ds[-1]
            parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(d["cpu_s"].items(), key=lambda kv: -kv[1]))
            notes.append(f"c CPU s during {what} (last rep, {d['wall_s']:.1f} s wall): {parts}; others on the "
                         f"machine {d['others_busy_s']:.1f}" + _others(d))
    for key, per, unit in (("rtt", "rtt", "call"), ("tput", "tp", "task"), ("tput0", "tp", "task")):
        res = R.get(key)
        if not res or not res.get("snaps"):
            continue
        labels = [lab for lab in res["snaps"] if lab.startswith(per) and res["snaps"][lab]]
        if not labels:
            continue
        count = res[per]["n"] if per == "tp" else res["rtt"]["n"]
        d = res["snaps"][labels[-1]]  # the last timed run
        parts = ", ".join(f"{k} {v / count * 1e3:.3f}" for k, v in sorted(d["cpu_s"].items(), key=lambda kv: -kv[1]))
        busy = d["cpu_total_s"] / d["wall_s"]
        notes.append(f"{key} CPU ms per {unit} ({labels[-1]}): total {d['cpu_total_s'] / count * 1e3:.3f} = {parts}; "
                     f"our processes kept {busy:.2f} of {os.cpu_count()} cores busy, others "
                     f"{d['others_busy_s'] / d['wall_s']:.2f}; gRPC via proxies "
                     f"{(d['grpc_up'] + d['grpc_down']) / count:.0f} B per {unit}" + _others(d))
    return notes


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------
def orchestrate(args):
    sys.path.insert(0, TESTS_DIR)
    from rehearsal.fargate import Rehearsal
    from s3_fixtures import SeaweedServer

    tag = uuid.uuid4().hex
    os.environ[TAG_VAR] = tag  # inherited by SeaweedFS, moto, the drivers, heads, nodes, executors
    os.environ["PYTHONPATH"] = REPO_ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                            if os.environ.get("PYTHONPATH") else "")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-fargate-"))
    started = _dt.datetime.now(_dt.timezone.utc)
    print(f"starburst Fargate rehearsal benchmarks ({'QUICK smoke run' if args.quick else 'full run'})  "
          f"{started.isoformat(timespec='seconds')}")
    print(_common.host_line(f"  python {platform.python_version()}"))
    print(f"config: a {args.rtt_iters} round trips (+{args.rtt_warmup} warm-up); b N={args.tp_n:,} x "
          f"{args.tp_runs} run(s) (+{args.tp_warmup} warm-up) at 40 ms and at 0 ms; c {args.array_mib} MiB x "
          f"{args.array_reps} rep(s) (+16 MiB warm-up); logs in {workdir}")
    print(flush=True)

    R = {"date": started.isoformat(timespec="seconds"), "quick": args.quick, "cpus": os.cpu_count(),
         "load_start": os.getloadavg(), "args": vars(args)}
    seaweed = SeaweedServer()
    moto = MotoProcess(workdir / "moto.log")
    rehearsal = None
    failed = False
    try:
        s3_env = seaweed.start()
        moto_endpoint = moto.start()
        log(f"SeaweedFS at {s3_env.endpoint}, moto at {moto_endpoint}")
        R["link_idle"] = measure_link(LINK_MS, args.link_pings)
        log(f"link (proxy alone, idle, 64 B ping-pong): p50 {R['link_idle']['p50_s'] * 1e3:.2f} ms, "
            f"p90 {R['link_idle']['p90_s'] * 1e3:.2f} ms")
        rehearsal = Rehearsal(moto_endpoint, s3_env, workdir / "home").enter()
        snapshotter = Snapshotter(tag)
        common = dict(lease=60)
        plan = []
        if "a" in args.only:
            plan.append(("rtt", "rtt", LINK_MS, dict(common, workers=1, cpu=1, memory="2GB",
                                                     rtt_iters=args.rtt_iters, rtt_warmup=args.rtt_warmup)))
        if "b" in args.only:
            tp = dict(common, workers=4, cpu=2, memory="4GB", tp_n=args.tp_n, tp_runs=args.tp_runs,
                      tp_warmup=args.tp_warmup)
            plan.append(("tput", "tput", LINK_MS, tp))
            plan.append(("tput0", "tput", 0.0, dict(tp, rtt_iters=args.rtt_iters, rtt_warmup=args.rtt_warmup)))
        if "c" in args.only:
            plan.append(("array", "array", LINK_MS, dict(common, workers=1, cpu=2, memory="8GB",
                                                         array_mib=args.array_mib, array_reps=args.array_reps,
                                                         baseline_concurrency=args.baseline_concurrency)))
        for name, scenario, latency, cfg in plan:
            R[name] = run_scenario(name, scenario, latency, cfg, rehearsal, snapshotter, workdir, args)
            failed |= not R[name].get("ok")
    except BaseException:
        failed = True
        R["error"] = traceback.format_exc()
        print(R["error"], file=sys.stderr)
    finally:
        if rehearsal is not None:
            with contextlib.suppress(Exception):
                rehearsal.exit()
        moto.stop()
        seaweed.stop()
        # Anything of this run still alive is a leak: report it and end it by pid.
        time.sleep(0.5)
        left = _common.tagged_pids(TAG_VAR, tag)
        R["left_behind"] = []
        for pid in left:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            R["left_behind"].append(f"{pid} {cmd}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    R["load_end"] = os.getloadavg()
    if args.json_out:  # first, so that a problem in the report loses nothing (see --report)
        with open(args.json_out, "w") as f:
            json.dump(R, f, indent=2, default=str)
    try:
        report(R)
    except Exception:
        traceback.print_exc()
        failed = True
    if args.json_out:
        print(f"\nJSON written to {args.json_out}")
    if failed or args.keep_logs:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def report(R):
    """Print the table and the notes for the results ``R`` (of this run, or loaded from --json-out)."""
    rows, notes = build_rows(R)
    print()
    print(_common.format_table(("measurement", "starburst", "baseline", "ratio", "goal", "met?"), rows,
                               left=(0, 4, 5)))
    print()
    notes = cpu_notes(R) + notes
    for key in ("rtt", "tput", "tput0", "array"):
        r = R.get(key)
        if r:
            bits = [f"init {r.get('init_s', float('nan')):.1f} s",
                    f"nodes ready {r.get('nodes_ready_s', float('nan')):.1f} s",
                    f"shutdown {r.get('shutdown_s', float('nan')):.1f} s", f"scenario {r['scenario_wall_s']:.0f} s"]
            if r.get("tp"):
                bits.append("runs " + ", ".join(f"{x['rate']:,.0f}/s (submit {x['submit_s']:.2f} s, "
                                                f"{x['executors_used']} executors)" for x in r["tp"]["runs"]))
            if r.get("nodes_still_running_at_close"):
                bits.append("NODES STILL RUNNING: " + r["nodes_still_running_at_close"])
            if r.get("agent_errors"):
                bits.append(f"agent errors: {r['agent_errors'][-3:]}")
            if not r.get("ok"):
                bits.append("ERROR: " + (r.get("error") or "?").strip().splitlines()[-1])
            notes.append(f"{key}: " + "; ".join(bits))
    for lab, lk in (("idle, before any cluster", R.get("link_idle")),
                    ("with the agent polling, before a's driver", (R.get("rtt") or {}).get("link"))):
        if lk:
            notes.append(f"link alone ({lab}; LatencyProxy rtt 40 ms, 64 B ping-pong): p50 {fmt_ms(lk['p50_s'])}, "
                         f"p90 {fmt_ms(lk['p90_s'])}, min {fmt_ms(lk['min_s'])}")
    notes.append(f"left behind: {len(R['left_behind'])} process(es)" +
                 (" (ended by the harness): " + "; ".join(R["left_behind"]) if R["left_behind"] else ""))
    notes.append(f"load avg at end: {_common.fmt_loads(R['load_end'])}")
    for n in notes:
        print("  - " + n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 50 round trips, 2,000 tasks, 256 MiB")
    p.add_argument("--only", default="abc", help="subset of the measurements, e.g. 'a' or 'bc' (default abc)")
    p.add_argument("--rtt-iters", type=int, default=None, help="sync round trips (default 300, quick 50)")
    p.add_argument("--rtt-warmup", type=int, default=None, help="warm-up round trips (default 30, quick 10)")
    p.add_argument("--tp-n", type=int, default=None, help="tasks per throughput run (default 10000, quick 2000)")
    p.add_argument("--tp-runs", type=int, default=None, help="timed throughput runs (default 3, quick 1)")
    p.add_argument("--tp-warmup", type=int, default=None, help="warm-up tasks (default 1000, quick 400)")
    p.add_argument("--array-mib", type=int, default=None, help="array size in MiB (default 1024, quick 256)")
    p.add_argument("--array-reps", type=int, default=None, help="timed array reps (default 2, quick 1)")
    p.add_argument("--baseline-concurrency", type=int, default=10,
                   help="boto3 TransferConfig max_concurrency (default 10, boto3's default)")
    p.add_argument("--link-pings", type=int, default=100, help="ping-pongs through the proxy alone")
    p.add_argument("--scenario-timeout", type=float, default=900.0, help="seconds per cluster")
    p.add_argument("--json-out", default=None, help="also write all results as JSON here")
    p.add_argument("--keep-logs", action="store_true", help="keep the node/driver/moto logs")
    p.add_argument("--verbose", "-v", action="store_true", help="show the drivers' output")
    p.add_argument("--report", metavar="JSON", help="print the table and notes of an earlier --json-out")
    p.add_argument("--driver", help=argparse.SUPPRESS)
    p.add_argument("--cfg", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.driver:
        return driver_main(args.driver, json.loads(args.cfg))
    if args.report:
        with open(args.report) as f:
            R = json.load(f)
        print(f"results of {R['date']} ({'quick' if R.get('quick') else 'full'} run, {R.get('cpus')} cpus)")
        report(R)
        return 0
    q = args.quick
    for k, (qv, fv) in dict(rtt_iters=(50, 300), rtt_warmup=(10, 30), tp_n=(2000, 10000), tp_runs=(1, 3),
                            tp_warmup=(400, 1000), array_mib=(256, 1024), array_reps=(1, 2)).items():
        if getattr(args, k) is None:
            setattr(args, k, qv if q else fv)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
