"""The head's scheduler as a state machine: operations in, operations out, no processes. Every step
is followed by ``check_invariants()``."""

from __future__ import annotations

import itertools

import pytest

from starburst._proto import starburst_pb2 as pb
from starburst.head.scheduler import TRIM_AFTER_TASKS, Node, Scheduler, Session

GiB = float(1 << 30)


class FakeStore:
    url = "file:///nowhere"

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)


class Harness:
    def __init__(self) -> None:
        self.now = 1000.0
        self.s = Scheduler(FakeStore(), clock=lambda: self.now)
        self.sent: dict[str, list] = {}
        self.ids = itertools.count(1)
        self.session = Session(self.s, "driver", lambda ops: None)
        self.s.open_session(self.session)
        self.fn = pb.Function(id=b"f" * 32, pickled=b"x", name="f")
        self.step([pb.ClientOp(function=self.fn)])

    def step(self, ops=(), node: Node | None = None) -> None:
        if node is None:
            self.s.on_client_ops(self.session, list(ops))
        else:
            self.s.on_node_ops(node, list(ops), lambda *_: None)
        self.s.flush()
        self.s.check_invariants()

    def add_node(self, name: str, cpus: float, memory: float = 0.0) -> Node:
        hello = pb.NodeHello(node_id=name)
        hello.resources.cpus, hello.resources.memory = cpus, memory
        self.sent[name] = []
        node = Node(self.s, name, hello, self.sent[name].extend)
        self.s.add_node(node)
        self.s.flush()
        self.s.check_invariants()
        return node

    def spec(self, cpus: float = 1.0, memory: float = 0.0, actor: bool = False, max_retries: int = 3) -> pb.TaskSpec:
        tid = next(self.ids).to_bytes(16, "big")
        spec = pb.TaskSpec(task_id=tid, function_id=self.fn.id, name="f", return_ids=[tid + b"\x00" * 4],
                           max_retries=max_retries)
        spec.resources.cpus, spec.resources.memory = cpus, memory
        if actor:
            spec.actor_id = b"a" + tid[1:]
            spec.actor.class_name = "A"
        return spec

    def submit(self, *specs: pb.TaskSpec) -> list[bytes]:
        self.step([pb.ClientOp(submit=s) for s in specs])
        return [s.task_id for s in specs]

    def runs(self, name: str) -> list[bytes]:
        """Task ids sent to the node so far (and forget them)."""
        ops, self.sent[name][:] = list(self.sent[name]), []
        self._recalls = getattr(self, "_recalls", {})
        self._recalls.setdefault(name, []).extend(
            t for op in ops if op.WhichOneof("op") == "recall" for t in op.recall.task_ids)
        return [op.run.spec.task_id for op in ops if op.WhichOneof("op") == "run"]

    def recalls(self, name: str) -> list[bytes]:
        self.runs(name)
        out, self._recalls[name] = self._recalls.get(name, []), []
        return out

    def two_nodes_sent_deep(self, count: int) -> tuple[Node, Node, list[bytes], list[bytes], list[bytes]]:
        """Two 1-CPU nodes "a" and "b"; f is known to be short (so tasks are sent deep); ``count``
        tasks submitted. Returns (a, b, task ids, ids sent to a, ids sent to b)."""
        a = self.add_node("a", 1)
        b = self.add_node("b", 1)
        warm = self.submit(self.spec())
        self.done(a if self.runs("a") else b, *warm)
        self.runs("b")
        ids = self.submit(*[self.spec() for _ in range(count)])
        return a, b, ids, self.runs("a"), self.runs("b")

    def done(self, node: Node, *task_ids: bytes, failure=pb.TaskDone.NONE, duration: float = 0.001) -> None:
        self.step([pb.NodeToHeadOp(done=pb.TaskDone(task_id=t, failure=failure, duration_s=duration))
                   for t in task_ids], node)


def test_a_node_with_idle_cpus_gets_tasks_recalled_from_a_busy_one():
    h = Harness()
    a, b, ids, on_a, on_b = h.two_nodes_sent_deep(20)
    assert on_a and on_b and len(on_a) + len(on_b) == 20 and set(on_a) | set(on_b) == set(ids)
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.step([pb.NodeToHeadOp(running=1)], b)
    assert h.recalls("a") == [] and h.recalls("b") == []  # both busy: nothing to take back
    h.done(b, *on_b)  # b is idle now; a still runs its first task with the rest queued behind
    h.step([pb.NodeToHeadOp(running=0)], b)
    recalled = h.recalls("a")
    assert recalled and set(recalled) <= set(on_a[1:])
    # Race: the first recalled task started on a before the recall arrived; the others come back.
    started, back = recalled[0], recalled[1:]
    h.done(a, *back, failure=pb.TaskDone.NOT_STARTED)
    assert sorted(h.runs("b")) == sorted(back)  # placed again, on the idle node
    for t in back:
        assert h.s.tasks[t].spec.attempt == 0  # a recall is not a retry
    h.done(a, started)
    assert started not in h.s.tasks  # it ran once, where it started
    assert h.s.tasks[on_a[0]].node is a  # the task a is running stays on a


def test_one_node_never_recalls():
    h = Harness()
    a = h.add_node("a", 2)
    h.submit(*[h.spec() for _ in range(10)])
    h.step([pb.NodeToHeadOp(running=2)], a)
    assert h.recalls("a") == []


def test_actors_hold_their_cpus_and_wait_for_them():
    h = Harness()
    a = h.add_node("a", 2)
    creations = h.submit(*[h.spec(cpus=1, actor=True) for _ in range(4)])
    assert h.runs("a") == creations[:2]
    h.done(a, *creations[:2])  # constructors finished: the actors still hold their CPUs
    reply = h.s._request(h.session, pb.ActorRequest(cluster_state=True))
    assert reply.available.cpus == 0
    assert h.runs("a") == []
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=b"a" + creations[0][1:], reason="killed"))], a)
    assert h.runs("a") == [creations[2]]
    assert h.s._request(h.session, pb.ActorRequest(cluster_state=True)).available.cpus == 0


def test_a_task_that_does_not_fit_does_not_hold_up_those_that_do():
    h = Harness()
    a = h.add_node("a", 2)
    (creation,) = h.submit(h.spec(cpus=1, actor=True))
    h.done(a, creation)
    h.runs("a")
    big = h.submit(h.spec(cpus=2))
    small = h.submit(*[h.spec(cpus=1) for _ in range(3)])
    assert h.runs("a") == small[:2]  # prefetched 2 per free CPU (the actor holds the other)
    h.done(a, *small[:2])
    assert h.runs("a") == small[2:]
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=b"a" + creation[1:], reason="killed"))], a)
    assert h.runs("a") == big


def test_memory_is_a_hard_resource():
    h = Harness()
    a = h.add_node("a", 4, memory=10 * GiB)
    ids = h.submit(*[h.spec(memory=6 * GiB) for _ in range(3)])
    assert h.runs("a") == ids[:1]
    h.done(a, ids[0])
    assert h.runs("a") == ids[1:2]
    reply = h.s._request(h.session, pb.ActorRequest(cluster_state=True))
    assert reply.available.memory == pytest.approx(4 * GiB)


def test_counts_separate_finished_failed_cancelled():
    h = Harness()
    a = h.add_node("a", 1)
    ok, bad, gone = h.submit(h.spec(), h.spec(max_retries=0), h.spec())
    h.runs("a")
    h.done(a, ok)
    h.done(a, bad, failure=pb.TaskDone.WORKER_DIED)
    h.step([pb.ClientOp(cancel=pb.Cancel(object_id=gone))])
    h.done(a, gone, failure=pb.TaskDone.CANCELLED)
    st = h.s.status()
    assert (st["finished"], st["failed"], st["cancelled"]) == (1, 1, 1)


def test_provider_interface_demand_busy_drain():
    h = Harness()
    a = h.add_node("a", 2)
    b = h.add_node("b", 2)
    assert h.s.demand() == 0 and not h.s.node_busy(a)
    (creation,) = h.submit(h.spec(cpus=1, actor=True))
    holder = a if h.runs("a") else b
    h.done(holder, creation)
    assert h.s.node_busy(holder)  # a live actor keeps its node
    other = b if holder is a else a
    h.s.drain(other)
    ids = h.submit(*[h.spec() for _ in range(5)])
    assert h.runs(other.node_id) == []  # nothing is placed on a draining node
    sent = h.runs(holder.node_id)
    assert len(sent) == 2  # one CPU is free of the actor: 2 per CPU are sent, 3 wait at the head
    assert h.s.demand() == 5 and h.s.has_waiting()
    while sent:
        h.done(holder, *sent)
        sent = h.runs(holder.node_id)
    assert h.s.demand() == 0 and not h.s.has_waiting() and ids[-1] not in h.s.tasks


def test_a_node_stuck_behind_a_long_task_has_all_its_queued_tasks_recalled():
    h = Harness()
    a, b, _, on_a, on_b = h.two_nodes_sent_deep(20)
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.now += 0.005  # b finishes its share quickly: a has not been stuck for long yet
    h.done(b, *on_b)
    first = h.recalls("a")
    assert len(first) == len(on_a[1:]) // 2 + len(on_a[1:]) % 2  # half of what a has not started
    h.done(a, *first, failure=pb.TaskDone.NOT_STARTED)
    again = h.runs("b")
    h.now += 1.0  # b works through those; a reports nothing for a second: it is stuck
    h.done(b, *again)
    rest = h.recalls("a")
    assert sorted(rest) == sorted(set(on_a[1:]) - set(first))  # everything it has not started


def test_a_recalled_task_is_not_placed_back_on_the_node_it_came_from():
    h = Harness()
    a, b, _, on_a, on_b = h.two_nodes_sent_deep(20)
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.now += 1.0  # a reports nothing for a second: stuck, all it has not started is recalled
    h.done(b, *on_b)
    recalled = h.recalls("a")
    assert len(recalled) == len(on_a) - 1
    h.done(a, *recalled, failure=pb.TaskDone.NOT_STARTED)
    assert sorted(h.runs("b")) == sorted(recalled) and h.runs("a") == []


def test_status_tells_running_from_queued():
    h = Harness()
    a = h.add_node("a", 2)
    h.submit(*[h.spec() for _ in range(10)])  # 2 per CPU are sent (unknown run time), 6 wait here
    assert len(h.runs("a")) == 4
    h.step([pb.NodeToHeadOp(running=2)], a)
    st = h.s.status()
    assert (st["running"], st["queued"]) == (2, 8)
    reply = h.s._request(h.session, pb.ActorRequest(cluster_state=True))
    assert reply.nodes[0].running == 2 and reply.nodes[0].queued == 2 and reply.nodes[0].cpus_in_use == 2


def test_a_cancel_that_crosses_a_recall_still_cancels():
    """The head cancels a task while its recall is on the way: the node hands it back unstarted
    (and then finds nothing to cancel). The task must end cancelled, not run elsewhere."""
    h = Harness()
    a, b, _, _, on_b = h.two_nodes_sent_deep(20)
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.done(b, *on_b)
    recalled = h.recalls("a")
    victim = recalled[0]
    h.step([pb.ClientOp(cancel=pb.Cancel(object_id=victim + b"\x00" * 4))])
    h.done(a, *recalled, failure=pb.TaskDone.NOT_STARTED)
    assert victim not in h.runs("b") and victim not in h.s.tasks
    assert h.s.status()["cancelled"] == 1


def test_s3_usage_reports_add_up_apart_for_drivers_and_nodes():
    """The cost meter's counts: drivers' downloads leave AWS, the nodes' executors' don't."""
    h = Harness()
    node = h.add_node("n1", cpus=1)
    executor = Session(h.s, "n1/exec-1", lambda ops: None)
    h.s.open_session(executor)
    h.s.on_client_ops(executor, [pb.ClientOp(hello=pb.Hello(kind="executor"))])
    h.step([pb.ClientOp(store_usage=pb.StoreUsage(put_requests=1, bytes_uploaded=100))])
    h.step([pb.ClientOp(store_usage=pb.StoreUsage(get_requests=2, bytes_downloaded=300))])
    h.s.on_client_ops(executor, [pb.ClientOp(store_usage=pb.StoreUsage(get_requests=5, bytes_downloaded=7))])
    (tid,) = h.submit(h.spec())
    done = pb.TaskDone(task_id=tid, store_usage=pb.StoreUsage(put_requests=4, delete_requests=1, bytes_uploaded=9))
    h.step([pb.NodeToHeadOp(done=done)], node=node)
    assert h.s.store_usage_drivers == pb.StoreUsage(put_requests=1, get_requests=2, bytes_uploaded=100,
                                                    bytes_downloaded=300)
    assert h.s.store_usage_nodes == pb.StoreUsage(put_requests=4, get_requests=5, delete_requests=1,
                                                  bytes_uploaded=9, bytes_downloaded=7)
    assert h.s.tasks_finished == 1


def test_work_a_node_hands_back_unasked_waits_for_another_node_not_for_it():
    """A node stuck behind a long task hands back its unstarted tasks on its own (NOT_STARTED, no
    recall): while the other node is full, they and the rest wait here, not on the stuck node (where
    they would wait for the long task, or bounce); they go where room frees up first, and the stuck
    node gets work again once it has finished something."""
    h = Harness()
    a, b, _, on_a, on_b = h.two_nodes_sent_deep(40)
    assert len(on_a) > 2 and len(on_b) > 2 and len(h.s.queue) > 0  # both full, some wait here
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.step([pb.NodeToHeadOp(running=1)], b)
    h.now += 0.05
    h.done(a, *on_a[1:], failure=pb.TaskDone.NOT_STARTED)  # unasked: a is stuck behind on_a[0]
    assert h.runs("a") == [] and h.recalls("a") == []
    assert all(h.s.tasks[t].spec.attempt == 0 for t in on_a[1:])  # not a retry
    h.done(b, *on_b[:3])  # room on b: the handed-back tasks go there, first in line
    moved = h.runs("b")
    assert moved and set(moved) <= set(on_a[1:])  # the handed-back tasks, first in line
    assert h.runs("a") == []
    h.now += 1.0
    h.done(a, on_a[0])  # a finished its long task: it may get work again
    assert h.runs("a")


def test_settle_gives_memory_back_once_after_a_large_burst_has_drained():
    h = Harness()
    node = h.add_node("a", 2000)
    assert h.s.settle() == 0  # nothing held, no burst
    ids = h.submit(*[h.spec() for _ in range(TRIM_AFTER_TASKS)])
    assert h.s.settle() == 0  # the burst is on
    h.done(node, *ids[: TRIM_AFTER_TASKS // 2])
    assert h.s.settle() == 0  # half of it is still held
    h.done(node, *ids[TRIM_AFTER_TASKS // 2:])
    assert len(h.s.tasks) == 0
    assert h.s.settle() == TRIM_AFTER_TASKS  # trimmed, once
    assert h.s.settle() == 0


def test_tasks_share_one_copy_of_their_function_id_and_unknown_ids_are_not_kept():
    """The shared copy is the function table's: a function that was never sent leaves nothing."""
    h = Harness()
    h.add_node("a", 1)
    first, second = h.submit(h.spec(), h.spec())
    assert h.s.tasks[first].function_id is h.s.tasks[second].function_id  # one bytes object, not one a task
    unknown = []
    for i in range(1100):  # functions that were never sent: each task fails at once
        spec = h.spec()
        spec.function_id = i.to_bytes(32, "big")
        unknown.append(spec)
    h.submit(*unknown)
    assert not any(s.task_id in h.s.tasks for s in unknown)
    assert list(h.s.functions.entries) == [h.fn.id]  # nothing kept for them


def test_a_queued_task_costs_the_head_little_python_memory():
    """A burst of 10,000 tasks held at once sets the high-water mark of the head's Python heap, and
    CPython's allocator keeps most of that after the burst (the soak benchmark's head RSS): each held
    task must stay small (no empty per-task sets, lists or resource dicts: ~640 bytes a task here,
    ~1,200 with them)."""
    import gc
    import tracemalloc

    h = Harness()
    n = 5000
    ops = [pb.ClientOp(submit=h.spec()) for _ in range(n)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h.s.on_client_ops(h.session, ops)  # no node yet: all of them stay queued
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(h.s.queue) == n
    per_task = held / n
    assert per_task < 800, f"{per_task:.0f} bytes of Python heap per queued task"


def test_short_tasks_are_prefetched_to_cover_the_round_trip_and_the_batching_windows():
    """A node gets a short task's next one a round trip later plus the batching windows of both
    ends (config.WINDOW_S each on a busy link): with 1 ms tasks over a 40 ms link, 16 per CPU left
    its CPUs idle two thirds of the time; with ~30 us tasks locally, a third of the time."""
    from starburst import config
    from starburst.head.scheduler import PREFETCH_PER_CPU_MAX, PREFETCH_PER_CPU_SHORT

    h = Harness()
    node = h.add_node("n", cpus=2)
    node.rtt = 0.040
    loop = node.rtt + 2 * config.WINDOW_S
    assert node.depth(0.001) * 0.001 >= loop  # a CPU's worth of work in flight for the whole loop
    node.rtt = 0.0
    assert node.depth(0.00003) == PREFETCH_PER_CPU_MAX  # (per-task overhead bounds how short counts)
    assert node.depth(0.004) == PREFETCH_PER_CPU_SHORT
    (f,) = h.submit(h.spec())
    h.runs("n")
    h.step([pb.NodeToHeadOp(done=pb.TaskDone(task_id=f, duration_s=0.00003))], node)
    sent = h.submit(*[h.spec() for _ in range(400)])
    assert len(h.runs("n")) == int(PREFETCH_PER_CPU_MAX * 2) and len(sent) == 400  # 128 in flight, not 32


def test_a_node_that_handed_back_everything_it_had_gets_work_again():
    """Both nodes handed work back unasked: one is stuck behind a long task, the other handed back
    all it had (a stall of its own, on a loaded machine). The second has nothing to be stuck
    behind: the waiting work goes there (before, it waited for a task to finish there, and none
    could: a CI run hung so until its timeout)."""
    h = Harness()
    a, b, _, on_a, on_b = h.two_nodes_sent_deep(40)
    h.step([pb.NodeToHeadOp(running=1)], a)
    h.now += 0.05
    h.done(a, *on_a[1:], failure=pb.TaskDone.NOT_STARTED)  # a: stuck behind on_a[0]
    h.done(b, *on_b, failure=pb.TaskDone.NOT_STARTED)  # b: all of it, none started
    assert h.runs("b"), "the waiting work never went to the idle node"
    assert h.runs("a") == []  # still stuck behind its long task
