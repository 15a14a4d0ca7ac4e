"""Function caches bounded and freed in step: the head keeps a function while a session holds it
or a task uses it, asks sessions back the least recently used ones beyond its byte budget, and tells
nodes (which tell executors) to drop what it dropped. Unit tests on the scheduler, then real processes."""

from __future__ import annotations

import pytest

from starburst._proto import starburst_pb2 as pb
from starburst.head.scheduler import Session

from test_scheduler_unit import Harness

MiB = 1 << 20


def _function(n: int, size: int = 100) -> pb.Function:
    return pb.Function(id=n.to_bytes(32, "big"), pickled=b"x" * size, name=f"f{n}")


def _spec(h: Harness, function: pb.Function) -> pb.TaskSpec:
    spec = h.spec()
    spec.function_id = function.id
    return spec


def _forgets(ops: list) -> list[bytes]:
    return [op.forget_function for op in ops if op.WhichOneof("op") == "forget_function"]


def test_a_released_function_is_dropped_once_its_last_task_ends_and_nodes_drop_it_too():
    h = Harness()
    node = h.add_node("a", 1)
    fn = _function(1)
    h.step([pb.ClientOp(function=fn)])
    (task,) = h.submit(_spec(h, fn))
    assert h.runs("a") == [task]
    h.step([pb.ClientOp(release_function=fn.id)])  # the driver dropped it; the task still runs
    assert fn.id in h.s.functions and _forgets(h.sent["a"]) == []
    h.done(node, task)
    assert fn.id not in h.s.functions
    assert _forgets(h.sent["a"]) == [fn.id]
    assert fn.id not in node.functions  # sent again with the next task that names it


def test_over_budget_the_least_recently_used_unused_functions_are_asked_back():
    h = Harness()
    got: list = []
    session = Session(h.s, "other", got.extend)
    h.s.open_session(session)
    fns = [_function(n) for n in range(2, 5)]
    h.s.functions.budget = h.fn.ByteSize() + 2 * fns[0].ByteSize() - 1
    h.add_node("a", 1)
    h.s.on_client_ops(session, [pb.ClientOp(function=fns[0])])
    (busy,) = h.submit(_spec(h, fns[0]))  # fns[0] is in use
    h.s.on_client_ops(session, [pb.ClientOp(function=fns[1])])
    assert _forgets(got) == []
    h.s.on_client_ops(session, [pb.ClientOp(function=fns[2])])
    h.s.flush()
    assert _forgets(got) == [fns[1].id]  # least recently used and unused; fns[0] is in use
    # Race: the session names fns[1] in a task before its release arrives: the head still has it.
    h.s.on_client_ops(session, [pb.ClientOp(submit=_spec(h, fns[1]))])
    assert fns[1].id in h.s.functions
    h.s.on_client_ops(session, [pb.ClientOp(release_function=fns[1].id)])
    assert fns[1].id in h.s.functions  # its task has not ended
    h.s.flush()
    h.s.check_invariants()
    assert busy in h.s.tasks


def test_a_function_asked_back_and_released_is_dropped_and_the_session_must_send_it_again():
    h = Harness()
    got: list = []
    session = Session(h.s, "other", got.extend)
    h.s.open_session(session)
    h.s.functions.budget = 150
    old, new = _function(7), _function(8)
    h.s.on_client_ops(session, [pb.ClientOp(function=old), pb.ClientOp(function=new)])
    h.s.flush()
    assert _forgets(got) == [old.id]
    h.s.on_client_ops(session, [pb.ClientOp(release_function=old.id)])
    assert old.id not in h.s.functions and new.id in h.s.functions
    assert h.s.functions.bytes == h.fn.ByteSize() + new.ByteSize()  # (the harness driver still holds its own)


def test_a_closed_session_holds_no_function():
    h = Harness()
    got: list = []
    session = Session(h.s, "other", got.extend)
    h.s.open_session(session)
    fn = _function(9)
    h.s.on_client_ops(session, [pb.ClientOp(function=fn)])
    h.s.close_session(session)
    assert fn.id not in h.s.functions


# ------------------------------------------------------------------ real processes

@pytest.mark.slow
def test_many_large_closures_leave_no_memory_behind_in_head_node_and_executor(run_script):
    """30 distinct closures of 8 MiB each run once and are dropped by the driver: the head, the node
    and the executor that ran them each give the memory back (before: ~240 MiB kept in each)."""
    proc = run_script(
        """
        import gc, os, time
        import psutil
        import starburst

        starburst.init(num_cpus=1)
        head = psutil.Process(starburst.api._started_head.pid)

        @starburst.remote
        def pid():
            return os.getpid(), os.getppid()

        executor_pid, node_pid = starburst.get(pid.remote())
        node, executor = psutil.Process(node_pid), psutil.Process(executor_pid)
        procs = {"head": head, "node": node, "executor": executor}

        def make(i):
            blob = os.urandom(8 << 20)
            return starburst.remote(lambda: (i, len(blob)))

        def rss():
            return {name: p.memory_info().rss for name, p in procs.items()}

        start = rss()
        peak = dict(start)
        for i in range(30):
            f = make(i)
            assert starburst.get(f.remote()) == (i, 8 << 20)
            del f
            gc.collect()
            peak = {k: max(v, rss()[k]) for k, v in peak.items()}
        assert starburst.get(pid.remote()) == (executor_pid, node_pid)  # the same executor ran them all
        deadline = time.monotonic() + 60
        while True:
            now = rss()
            if all(now[k] < start[k] + (24 << 20) for k in now) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for k in now:
            print(f"{k}: start {start[k] >> 20} MiB, peak {peak[k] >> 20} MiB, end {now[k] >> 20} MiB")
        starburst.shutdown()
        """, timeout=300,
    )
    print(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if ": start " in line]
    assert len(lines) == 3, proc.stdout + proc.stderr[-3000:]
    for line in lines:
        name, rest = line.split(": ", 1)
        numbers = [int(part.split()[-2]) for part in rest.split(", ")]
        start, _peak, end = numbers
        assert end < start + 24, proc.stdout  # MiB: 30 x 8 MiB were kept before (3 functions of slack)
