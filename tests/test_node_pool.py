"""The node's pool bookkeeping as a state machine (no processes): placement, pipelining, stealing,
recalls and their races, blocking, executor death. ``check_invariants()`` runs after every step."""

from __future__ import annotations

import itertools

from starburst._proto import starburst_pb2 as pb
from starburst.node.pool import (
    MAX_OVERTAKEN, PIPELINE_DEPTH, PIPELINE_REFILL, STUCK_FACTOR, STUCK_MIN_S, Pool, Slot,
)

FN = b"f" * 32


class Sink:
    def __init__(self) -> None:
        self.pool: Pool | None = None
        self.sent: dict[int, list] = {}
        self.head: list[pb.NodeToHeadOp] = []
        self.spawned = 0

    def run(self, slot: Slot, run: pb.Run) -> None:
        self.sent.setdefault(slot.id, []).append(("run", run.spec.task_id))

    def recall(self, slot: Slot, task_ids: list[bytes]) -> None:
        self.sent.setdefault(slot.id, []).append(("recall", list(task_ids)))

    def spawn(self) -> None:
        self.spawned += 1

    def to_head(self, op: pb.NodeToHeadOp) -> None:
        self.head.append(op)

    report = to_head

    def take(self, slot: Slot) -> list:
        out, self.sent[slot.id] = self.sent.get(slot.id, []), []
        return out

    def not_started(self) -> list[bytes]:
        out = [op.done.task_id for op in self.head
               if op.WhichOneof("op") == "done" and op.done.failure == pb.TaskDone.NOT_STARTED]
        self.head = [op for op in self.head if not (op.WhichOneof("op") == "done")]
        return out


class Harness:
    def __init__(self, cpus: int = 2, executors: int = 2) -> None:
        self.sink = Sink()
        self.now = 100.0
        self.pool = Pool(cpus, executors, executors * 4, self.sink, clock=lambda: self.now)
        self.ids = itertools.count(1)
        self.slots = []
        for i in range(executors):
            slot = Slot(i)
            self.pool.add(slot)
            self.pool.connected(slot)
            self.slots.append(slot)
        self.check()

    def check(self) -> None:
        self.pool.check_invariants()

    def run(self, cpus: float = 1.0, fn: bytes = FN) -> pb.Run:
        tid = next(self.ids).to_bytes(16, "big")
        run = pb.Run(spec=pb.TaskSpec(task_id=tid, function_id=fn))
        run.spec.resources.cpus = cpus
        return run

    def submit(self, *runs: pb.Run) -> list[bytes]:
        for run in runs:
            self.pool.submit(run)
        self.pool.pump()
        self.check()
        return [r.spec.task_id for r in runs]

    def done(self, slot: Slot, task_id: bytes, duration: float = 0.001) -> None:
        self.pool.done(slot, pb.TaskDone(task_id=task_id, duration_s=duration))
        self.pool.pump()
        self.check()

    def returned(self, slot: Slot, task_ids) -> None:
        self.pool.returned(slot, task_ids)
        self.pool.pump()
        self.check()

    def short(self) -> None:
        """Make FN known as short (its calls get pipelined)."""
        (t,) = self.submit(self.run())
        slot = next(s for s in self.slots if s.runs)
        self.done(slot, t)
        for s in self.slots:
            self.sink.take(s)


def runs_of(sent) -> list[bytes]:
    return [x for kind, x in sent if kind == "run"]


def recalls_of(sent) -> list[bytes]:
    return [t for kind, x in sent if kind == "recall" for t in x]


def test_an_idle_executor_takes_work_queued_behind_a_straggler():
    h = Harness()
    h.short()
    a, b = h.slots
    ids = h.submit(*[h.run() for _ in range(10)])
    on_a, on_b = runs_of(h.sink.take(a)), runs_of(h.sink.take(b))
    assert len(on_a) + len(on_b) == 10 and on_a and on_b  # pipelined on both
    assert set(on_a) | set(on_b) == set(ids)
    for t in on_b:  # b finishes all of its share; a is still on its first (the straggler)
        h.done(b, t)
    asked = recalls_of(h.sink.take(a))
    assert asked and set(asked) <= set(on_a[1:])  # only unstarted ones, from the tail
    # Race: a started the first asked one already; it hands back the others.
    h.returned(a, asked[1:])
    assert set(runs_of(h.sink.take(b))) == set(asked[1:])  # placed again, on the idle executor
    assert asked[0] in {r.spec.task_id for r in a.runs}  # the started one stays where it runs
    assert h.sink.not_started() == []  # nothing goes to the head for a steal inside the node


def test_an_executor_may_hand_back_what_the_node_counts_as_running():
    """The run after a finished one counts as running at the node before the executor starts it."""
    h = Harness(cpus=1, executors=1)
    h.short()
    (a,) = h.slots
    first, second = h.submit(h.run(), h.run())
    assert runs_of(h.sink.take(a)) == [first, second]
    h.pool.head_recall([second])
    h.check()
    h.done(a, first)  # second is now a.runs[0]
    h.returned(a, [second])
    assert h.sink.not_started() == [second]  # recalled by the head: goes to it
    assert h.pool.free_cpus == 1 and not a.runs


def test_head_recall_answers_from_the_queue_at_once_and_from_executors_when_returned():
    h = Harness(cpus=1, executors=1)
    (a,) = h.slots
    first, second, third = h.submit(h.run(), h.run(), h.run())  # not short: only one sent
    assert runs_of(h.sink.take(a)) == [first]
    h.pool.head_recall([first, third])
    h.check()
    assert h.sink.not_started() == [third]  # in the node's queue; the first has started: it runs on
    h.done(a, first)
    assert runs_of(h.sink.take(a)) == [second]


def test_a_task_that_cannot_start_does_not_block_later_ones_until_it_would_starve():
    h = Harness(cpus=2, executors=2)
    a, b = h.slots
    (long,) = h.submit(h.run())
    (big,) = h.submit(h.run(cpus=2))
    smalls = h.submit(*[h.run(fn=b"g" * 32) for _ in range(3)])
    first_small = runs_of(h.sink.take(b))
    assert first_small == smalls[:1]  # started although the big one is ahead of it
    rounds = 0
    while b.run is not None and rounds < 10 * MAX_OVERTAKEN:
        h.submit(h.run(fn=b"g" * 32))
        h.done(b, b.run.spec.task_id, duration=1.0)  # not short: never pipelined
        rounds += 1
    assert h.pool.overtaken[big] == MAX_OVERTAKEN and rounds < 2 * MAX_OVERTAKEN
    # After MAX_OVERTAKEN overtakes, the big task keeps the freed CPU: b idles, later ones wait.
    assert not b.runs and h.pool.queue[0].spec.task_id == big
    h.done(a, long)
    assert h.pool.free_cpus == 0 and big in {r.spec.task_id for r in a.runs + b.runs}


def test_blocked_task_lends_its_cpu_and_returned_work_is_placed_again():
    h = Harness(cpus=1, executors=2)
    h.short()
    a, b = h.slots
    parent, child = h.submit(h.run(), h.run())
    sent = runs_of(h.sink.take(a)) + runs_of(h.sink.take(b))
    assert sent == [parent, child]
    holder = a if parent in {r.spec.task_id for r in a.runs} else b
    h.pool.blocked(holder, True)  # waits in get(): hands back what is queued behind it
    h.returned(holder, [child])
    other = b if holder is a else a
    assert runs_of(h.sink.take(other)) == [child]
    h.done(other, child)
    h.pool.blocked(holder, False)
    h.check()
    h.done(holder, parent)
    assert h.pool.free_cpus == 1


def test_executor_death_puts_unstarted_runs_back_uncharged():
    h = Harness(cpus=1, executors=1)
    h.short()
    (a,) = h.slots
    ids = h.submit(*[h.run() for _ in range(3)])
    h.sink.take(a)
    running = h.pool.gone(a)
    assert running is not None and running.spec.task_id == ids[0]
    assert [r.spec.task_id for r in h.pool.queue] == ids[1:]
    assert h.pool.free_cpus == 1
    h.check()


def test_drain_hands_back_queued_and_pipelined_work():
    h = Harness(cpus=1, executors=1)
    h.short()
    (a,) = h.slots
    ids = h.submit(*[h.run() for _ in range(12)])  # 8 pipelined on the executor, 4 in the queue
    h.sink.take(a)
    h.pool.drain()
    h.check()
    assert h.sink.not_started() == ids[8:]
    asked = recalls_of(h.sink.take(a))
    assert asked == ids[1:8]
    h.returned(a, asked[2:])  # two had started meanwhile
    assert h.sink.not_started() == asked[2:]
    late = h.submit(h.run())  # the head sent it before it heard that the node drains
    assert h.sink.not_started() == late and not h.pool.queue  # (it sat in the queue until the node left)


def test_work_stuck_behind_a_straggler_goes_back_to_the_head_unasked():
    """One CPU, a call that runs long, short calls pipelined behind it: once no task has finished for
    STUCK_FACTOR x their run time (at least STUCK_MIN_S), the node asks them back from the executor
    and hands them to the head unstarted; one the executor started meanwhile runs on there. Asked
    again while the node stays stuck, it waits twice as long; a finished task resets that."""
    h = Harness(cpus=1, executors=1)
    h.short()
    (slot,) = h.slots
    t0 = h.now
    long, *shorts = h.submit(*(h.run() for _ in range(4)))
    assert runs_of(h.sink.take(slot)) == [long, *shorts]  # pipelined behind the long one
    due = h.pool.stuck_at()
    assert due == t0 + max(STUCK_MIN_S, STUCK_FACTOR * 0.001)
    h.now = due - 0.001
    assert h.pool.hand_back_stuck() == 0 and h.sink.take(slot) == []
    h.now = due
    assert h.pool.hand_back_stuck() == 3
    h.check()
    assert recalls_of(h.sink.take(slot)) == shorts and h.sink.not_started() == []  # the executor decides
    h.returned(slot, shorts[1:])  # it had started the first meanwhile
    assert h.sink.not_started() == shorts[1:]
    assert h.pool.stuck_at() is None  # nothing unstarted left here
    h.done(slot, long, duration=0.001)  # the long one ends, then the short one it had started
    h.done(slot, shorts[0])
    assert h.pool.free_cpus == 1

    # Stuck again: each hand-back while no task finishes doubles the wait.
    long, queued = h.submit(h.run(), h.run())
    assert runs_of(h.sink.take(slot)) == [long, queued]
    h.now += 1.0
    assert h.pool.hand_back_stuck() == 1
    h.returned(slot, [queued])
    assert h.sink.not_started() == [queued]
    (again,) = h.submit(h.run())  # the head had nowhere else to put it
    start = h.now
    assert h.pool.stuck_at() == start + 2 * max(STUCK_MIN_S, STUCK_FACTOR * 0.001)
    h.done(slot, long)  # progress: back to the first wait (and the queued one starts)
    assert h.pool.stuck_at() is None and h.pool.handbacks == 0


def test_stuck_work_in_the_node_queue_goes_back_at_once():
    """Tasks waiting in the node's queue (too long to pipeline) go back without an executor's word.
    The wait is counted from when work began to wait with no task finishing, and scales with the
    typical (median) run time here, which one long call doesn't move; a node that has finished
    nothing yet leaves it to the head's recall."""
    slow_fn = b"s" * 32
    h = Harness(cpus=1, executors=1)
    (slot,) = h.slots
    (first, second) = h.submit(h.run(fn=slow_fn), h.run(fn=slow_fn))
    assert h.pool.stuck_at() is None  # no run time known here yet
    h.now += 10
    assert h.pool.hand_back_stuck() == 0
    h.done(slot, first, duration=10)  # one long call...
    for _ in range(2):  # ... among calls of 50 ms
        (t,) = h.submit(h.run(fn=slow_fn))
        h.done(slot, second, duration=0.05)
        second = t
    h.sink.take(slot)
    h.now += 0.1  # a task runs, nothing waits: not stuck, however long it takes
    assert h.pool.stuck_at() is None
    since = h.now
    waiting = h.submit(h.run(fn=slow_fn), h.run(fn=slow_fn))
    assert [r.spec.task_id for r in h.pool.queue] == waiting
    due = h.pool.stuck_at()
    assert due is not None and abs(due - (since + STUCK_FACTOR * 0.05)) < 1e-9
    h.now = due - 0.001
    assert h.pool.hand_back_stuck() == 0
    h.now = due
    assert h.pool.hand_back_stuck() == 2
    h.check()
    assert h.sink.not_started() == waiting and not h.pool.queue
    assert h.pool.stuck_at() is None
    h.done(slot, second)


def test_a_pipelined_line_is_topped_up_in_batches_not_a_task_at_a_time():
    """An executor's line of short tasks gets more only once it is down to PIPELINE_REFILL, and then
    all the way to PIPELINE_DEPTH: one write to the executor per several tasks finished."""
    h = Harness(cpus=1, executors=1)
    h.short()
    (a,) = h.slots
    ids = h.submit(*[h.run() for _ in range(40)])
    sent = runs_of(h.sink.take(a))
    assert sent == ids[:PIPELINE_DEPTH]
    finished = 0
    for _ in range(PIPELINE_DEPTH - PIPELINE_REFILL - 1):  # the line stays above the refill mark
        h.done(a, a.runs[0].spec.task_id)
        finished += 1
        assert runs_of(h.sink.take(a)) == []
    h.done(a, a.runs[0].spec.task_id)  # down to the mark: topped up to the full depth at once
    finished += 1
    topped = runs_of(h.sink.take(a))
    assert topped == ids[PIPELINE_DEPTH:PIPELINE_DEPTH + PIPELINE_DEPTH - PIPELINE_REFILL]
    assert len(a.runs) == PIPELINE_DEPTH
    assert [r.spec.task_id for r in h.pool.queue] == ids[PIPELINE_DEPTH + len(topped):]
