"""What the head remembers for people watching: task counts per function, recent output and
errors, a timeline of finished tasks, and each job's output on disk (``joblog``).

The scheduler calls three hooks (``on_log``, ``on_done``, ``on_finish``) from its event loop;
:meth:`Observer.snapshot` reads the scheduler's state without changing it (for the dashboard and
``starburst status``). Everything kept in memory is bounded.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from .._proto import starburst_pb2 as pb
from .joblog import JobLogs
from .timeline import Timeline

if TYPE_CHECKING:
    from .scheduler import Node, Scheduler, Task

log = logging.getLogger("starburst.head")

RECENT_OUTPUT = 200
RECENT_ERRORS = 20
TIMELINE_EVENTS = 100_000


class FunctionStats:
    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0


class Observer:
    def __init__(self, scheduler: "Scheduler", joblogs: JobLogs | None = None) -> None:
        self.scheduler = scheduler
        self.joblogs = joblogs
        self.functions: dict[str, FunctionStats] = collections.defaultdict(FunctionStats)
        self.output: collections.deque[dict] = collections.deque(maxlen=RECENT_OUTPUT)
        self.errors: collections.deque[dict] = collections.deque(maxlen=RECENT_ERRORS)
        self.timeline = Timeline(TIMELINE_EVENTS)  # wall-clock times (the head's clock)
        #: (time, finished so far, finished per function) at each snapshot: rates over ~the last 30
        self._rate_samples: collections.deque[tuple[float, int, dict[str, int]]] = collections.deque(maxlen=30)

    # ------------------------------------------------------------------ hooks (scheduler's loop)

    def on_log(self, entry: pb.Log) -> None:
        kind = "err" if entry.stream == 2 else "out"
        self.output.append({"t": time.time(), "job": entry.job_id, "task": entry.task_name, "pid": entry.pid,
                            "node": entry.node, "stream": kind, "text": entry.text})
        if self.joblogs is not None:
            try:
                self.joblogs.write(entry.job_id, kind, entry.task_name, entry.pid, entry.node, entry.text)
            except OSError:
                log.exception("could not keep the output of job %s", entry.job_id)

    def flush(self) -> None:
        """Once per batch the head handled: the job logs' buffered records go to disk."""
        if self.joblogs is not None:
            try:
                self.joblogs.flush()
            except OSError:
                log.exception("could not write the job logs")

    def on_done(self, node: "Node", task: "Task", done: pb.TaskDone, failed: bool) -> None:
        """A node reports a run of ``task`` ended (also attempts that will be retried; not tasks
        handed back unstarted); ``failed``: it did not end with its values."""
        end = time.time()
        self.timeline.append(task.spec.name, node.node_id, done.executor_pid, end - done.duration_s, end, failed)

    def on_finish(self, task: "Task", error: pb.Value | None, cancelled: bool) -> None:
        """A task is over for good: with its values, ``error``, or cancelled (a driver that leaves
        cancels its unfinished tasks: that is no error of the job's, and not worth its log)."""
        if cancelled:
            return
        stats = self.functions[task.spec.name]
        if error is None:
            stats.done += 1
            return
        stats.failed += 1
        text = _error_text(error)
        self.errors.append({"t": time.time(), "job": task.spec.job_id, "task": task.spec.name, "text": text})
        if self.joblogs is not None:
            try:
                self.joblogs.write(task.spec.job_id, "error", task.spec.name, 0, "", text)
            except OSError:
                log.exception("could not keep the error of job %s", task.spec.job_id)

    # ------------------------------------------------------------------ reading

    def sample(self) -> None:
        """Record the counts now (the head calls it once a second): rates are measured over the
        last ~30 samples, however many readers ask for snapshots."""
        per_function = {name: st.done + st.failed for name, st in self.functions.items()}
        self._rate_samples.append((time.monotonic(), self.scheduler.tasks_finished, per_function))

    def snapshot(self, provider_status: pb.ClusterStatus | None = None) -> dict[str, Any]:
        """The cluster as a JSON-able dict (read-only)."""
        from .scheduler import Task

        s = self.scheduler
        now = time.monotonic()
        per_function = {name: st.done + st.failed for name, st in self.functions.items()}
        t0, n0, f0 = self._rate_samples[0] if self._rate_samples else (now, s.tasks_finished, per_function)
        span = now - t0

        def rate_of(count: int, before: int) -> float:
            return round((count - before) / span, 2) if span > 0.5 else 0.0

        rate = rate_of(s.tasks_finished, n0)
        funcs: dict[str, dict[str, Any]] = {}

        def row(name: str) -> dict[str, Any]:
            r = funcs.get(name)
            if r is None:
                st = self.functions.get(name)
                r = funcs[name] = {"name": name, "queued": 0, "running": 0, "done": st.done if st else 0,
                                   "failed": st.failed if st else 0, "rate_per_s": 0.0}
            return r

        for name in self.functions:
            row(name)["rate_per_s"] = rate_of(per_function[name], f0.get(name, 0))
        for task in s.tasks.values():
            r = row(task.spec.name)
            r["running" if task.state == Task.RUNNING else "queued"] += 1
        nodes = []
        for n in s.nodes:
            res = n.hello.resources
            nodes.append({"id": n.node_id, "address": n.hello.address, "cpus": res.cpus,
                          "cpus_busy": round(n.cpus_in_use(), 3), "memory": res.memory,
                          "running": n.started() + len(n.actor_inflight), "queued": n.unstarted(),
                          "executors": n.executors,
                          "state": "draining" if n.draining else "up", "rtt_ms": round(n.rtt * 1000, 2)})
        actors = []
        for a in s.actors.values():
            actors.append({"id": a.id.hex(), "class": a.options.class_name, "name": a.name, "state": a.state,
                           "node": a.node.node_id if a.node else "", "restarts": a.restarts,
                           "queued": len(a.calls), "running": len(a.inflight), "detached": a.options.detached})
        stored = inline = 0
        stored_bytes = inline_bytes = 0
        for o in s.objects.values():
            if o.value is None:
                continue
            if o.value.WhichOneof("where") == "key":
                stored += 1
                stored_bytes += o.value.size
            else:
                inline += 1
                inline_bytes += o.value.size
        url = s.store.url
        cluster: dict[str, Any] = {}
        if provider_status is not None:
            c = provider_status
            cluster = {"provider": c.provider, "cluster_id": c.cluster_id, "region": c.region,
                       "nodes_pending": c.nodes_pending, "workers": [c.workers_min, c.workers_max],
                       "node_size": c.node_size, "cost_usd": c.cost_usd, "cost_per_hour": c.cost_per_hour,
                       "max_cost": c.max_cost or None, "message": c.message}
            if c.local_cpus:  # a hybrid cluster: this machine's node and the burst policy
                cluster["hybrid"] = {"local_cpus": c.local_cpus, "burst": c.burst, "decision": c.burst_decision,
                                     "burst_nodes": c.burst_nodes, "tasks_local": c.tasks_local,
                                     "tasks_cloud": c.tasks_cloud}
            if c.max_cost:
                cluster["budget_left"] = max(0.0, c.max_cost - c.cost_usd)
                cluster["hours_left"] = (cluster["budget_left"] / c.cost_per_hour) if c.cost_per_hour else None
        totals = {k: sum(f[k] for f in funcs.values()) for k in ("queued", "running", "done", "failed")}
        return {
            "time": time.time(),
            "uptime_s": now - s.started,
            "nodes": nodes,
            "tasks": {**totals, "rate_per_s": rate},
            "functions": sorted(funcs.values(), key=lambda f: f["name"]),
            "actors": actors,
            "objects": {"count": stored + inline, "bytes": stored_bytes + inline_bytes, "stored": stored,
                        "stored_bytes": stored_bytes, "inline": inline, "inline_bytes": inline_bytes,
                        "store": "s3" if url.startswith("s3://") else "local", "url": url},
            "cluster": cluster,
            "sessions": sum(1 for x in s.sessions.values() if x.kind == "driver" and "/" not in x.session_id),
            "output": list(self.output)[-50:],
            "errors": list(self.errors),
        }

    def trace(self) -> list[dict[str, Any]]:
        """The timeline as Chrome trace events (``chrome://tracing``, Perfetto): one complete event
        ("ph": "X") per task run, a process per node and a thread per executor."""
        events: list[dict[str, Any]] = []
        nodes: dict[str, int] = {}
        for name, node, pid, start, end, failed in self.timeline:
            if node not in nodes:
                nodes[node] = len(nodes) + 1
                events.append({"name": "process_name", "ph": "M", "pid": nodes[node], "tid": 0,
                               "args": {"name": f"node {node}"}})
            events.append({"name": name, "cat": "task", "ph": "X", "pid": nodes[node], "tid": pid,
                           "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6,
                           "args": {"node": node, "executor_pid": pid, "function": name, "failed": failed}})
        return events


def _error_text(value: pb.Value) -> str:
    if value.WhichOneof("where") != "inline":
        return "(an error value kept in the object store)"
    from ..serialization import deserialize

    try:
        return str(deserialize(value.inline))
    except Exception as exc:  # noqa: BLE001 - e.g. a user exception class the head can't import
        return f"(an error the head could not load: {exc!r})"
