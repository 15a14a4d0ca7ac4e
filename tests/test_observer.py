"""The head's observer, driven through the scheduler state machine (no processes): counts per
function move from queued to running to done/failed, output and final errors reach the job log,
and each run lands in the timeline with its node and executor."""

from __future__ import annotations

import json

from starburst._proto import starburst_pb2 as pb
from starburst.exceptions import RayTaskError
from starburst.head import joblog
from starburst.head.observer import Observer
from starburst.head.scheduler import Node, Scheduler, Session
from starburst.store import error_value, open_store


def _spec(i: int, name: str = "mod.work") -> pb.TaskSpec:
    task_id = i.to_bytes(16, "big")
    return pb.TaskSpec(task_id=task_id, function_id=b"f", name=name, return_ids=[task_id + b"\x00" * 4],
                       resources=pb.Resources(cpus=1), job_id="job-test")


def _observed(tmp_path, monkeypatch) -> tuple[Scheduler, Observer, Session]:
    """A scheduler with an observer (job logs under a private home) and one driver's session that
    sent function ``work``."""
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    sched = Scheduler(open_store(f"file://{tmp_path / 'store'}"))
    observer = sched.observer = Observer(sched, joblog.JobLogs())
    session = Session(sched, "s1", lambda ops: None)
    sched.open_session(session)
    sched.on_client_ops(session, [pb.ClientOp(hello=pb.Hello(kind="driver")),
                                  pb.ClientOp(function=pb.Function(id=b"f", name="work"))])
    return sched, observer, session


def test_counts_timeline_output_and_errors(tmp_path, monkeypatch):
    sched, observer, session = _observed(tmp_path, monkeypatch)
    sched.on_client_ops(session, [pb.ClientOp(submit=_spec(i)) for i in range(3)])
    funcs = observer.snapshot()["functions"]
    assert funcs == [{"name": "mod.work", "queued": 3, "running": 0, "done": 0, "failed": 0, "rate_per_s": 0.0}]

    node = Node(sched, "n1", pb.NodeHello(node_id="n1", resources=pb.Resources(cpus=1)), lambda ops: None)
    sched.add_node(node)
    snap = observer.snapshot()
    running = snap["functions"][0]["running"]
    assert running >= 1 and running + snap["functions"][0]["queued"] == 3
    assert snap["nodes"][0]["id"] == "n1" and snap["tasks"]["running"] == running

    first = next(iter(node.inflight.values())).spec
    ok = pb.TaskDone(task_id=first.task_id, duration_s=0.25, executor_pid=4242,
                     results=[pb.Object(id=first.return_ids[0], value=pb.Value(inline=b"x", size=1))])
    log = pb.Log(job_id="job-test", task_name="mod.work", pid=4242, stream=1, text="hello")
    sched.on_node_ops(node, [pb.NodeToHeadOp(log=log), pb.NodeToHeadOp(done=ok)], relay=None)
    second = next(iter(node.inflight.values())).spec
    error = error_value(RayTaskError("mod.work", "Traceback...\nValueError: boom", ValueError("boom"), 4243))
    bad = pb.TaskDone(task_id=second.task_id, duration_s=0.5, executor_pid=4243,
                      results=[pb.Object(id=second.return_ids[0], value=error)])
    sched.on_node_ops(node, [pb.NodeToHeadOp(done=bad)], relay=None)

    snap = observer.snapshot()
    row = snap["functions"][0]
    assert (row["done"], row["failed"], row["queued"] + row["running"]) == (1, 1, 1)
    assert snap["output"][0]["text"] == "hello"
    assert "ValueError: boom" in snap["errors"][0]["text"]
    trace = [e for e in observer.trace() if e["ph"] == "X"]
    assert [(e["tid"], e["args"]["node"], e["args"]["failed"]) for e in trace] == [(4242, "n1", False),
                                                                                     (4243, "n1", True)]
    assert abs(trace[0]["dur"] - 0.25e6) < 1
    json.dumps(snap)  # what the dashboard sends
    sched.flush()  # as the head does after each batch: the job log's records reach the disk
    kept = list(joblog.read("job-test"))
    assert [r["k"] for r in kept] == ["out", "error"] and "ValueError: boom" in kept[1]["text"]


def test_cancelled_tasks_are_no_errors_and_handed_back_runs_no_runs(tmp_path, monkeypatch):
    """A driver that leaves cancels its unfinished tasks: the job's log and the dashboard's errors
    don't fill with them. A task a node hands back unstarted never ran: no timeline entry."""
    sched, observer, session = _observed(tmp_path, monkeypatch)
    sched.on_client_ops(session, [pb.ClientOp(submit=_spec(i)) for i in range(5)])
    node = Node(sched, "n1", pb.NodeHello(node_id="n1", resources=pb.Resources(cpus=1)), lambda ops: None)
    sched.add_node(node)
    sent = next(iter(node.inflight.values())).spec
    sched.on_node_ops(node, [pb.NodeToHeadOp(done=pb.TaskDone(task_id=sent.task_id,
                                                              failure=pb.TaskDone.NOT_STARTED))], relay=None)
    assert [e for e in observer.trace() if e["ph"] == "X"] == []
    sched.close_session(session)  # the driver leaves: its five tasks are cancelled
    running = [pb.NodeToHeadOp(done=pb.TaskDone(task_id=t, failure=pb.TaskDone.CANCELLED)) for t in node.inflight]
    sched.on_node_ops(node, running, relay=None)  # the node confirms those it had
    assert sched.tasks_cancelled == 5
    sched.flush()
    assert observer.snapshot()["errors"] == [] and observer.functions["mod.work"].failed == 0
    assert [r for r in joblog.read("job-test") if r["k"] == "error"] == []
