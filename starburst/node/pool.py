"""The node's bookkeeping as a state machine without I/O: its queue, its CPUs, which executor runs
or has queued what (pipelining), CPUs lent by blocked tasks, stealing and recalls.

Who may hold a task that has not started: the node's ``queue``, or an executor's line behind the
task it runs (``Slot.runs[1:]``, pipelined short tasks). A task leaves an executor's line only when
the executor says so: it finished (``done``) or it hands the task back unstarted (``returned``,
after a recall). So a task starts exactly once, whatever races a recall with its start.

:class:`NodeServer` (``server.py``) feeds events in and carries out what the pool asks through a
:class:`PoolSink`; the unit tests use a fake sink and run :meth:`Pool.check_invariants` after
every step.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Callable, Protocol

from .._proto import starburst_pb2 as pb

#: Short tasks (by their function's recent run time) may queue this many deep on a busy executor, so
#: it starts the next one without a round trip to the node; longer tasks wait at the node.
PIPELINE_DEPTH = 8
#: A line is topped up (to PIPELINE_DEPTH) only once it is down to this many: each write to the
#: executor then carries several tasks, not one per task finished.
PIPELINE_REFILL = 4
SHORT_TASK_S = 0.005
#: A task that can't start yet (too few free CPUs) lets later tasks that can start go first, this
#: many times at most; then the node keeps CPUs for it as they free up (no starvation).
MAX_OVERTAKEN = 64
#: How many waiting tasks the node looks past for one that can start (per placement pass).
LOOK_PAST = 16
#: Stuck work goes back to the head: unstarted tasks that have waited, with no task finishing here,
#: STUCK_FACTOR times the typical run time of tasks here (the median of the last RECENT; a rare long
#: call doesn't move it), at least STUCK_MIN_S, are handed back unstarted for the head to place
#: elsewhere. Each hand-back while the node stays stuck doubles the wait (up to
#: STUCK_MAX_S), so a cluster busy everywhere doesn't bounce work around.
STUCK_FACTOR = 4.0
STUCK_MIN_S = 0.01
STUCK_MAX_S = 2.0
RECENT = 31
EPS = 1e-9


class Slot:
    """The pool's record of one executor process (the server's ``Executor`` extends it)."""

    def __init__(self, executor_id: int) -> None:
        self.id = executor_id
        self.runs: collections.deque[pb.Run] = collections.deque()  # sent, in order; [0] is running
        self.recalled: set[bytes] = set()  # queued runs asked back (recall sent, no answer yet)
        self.connected = False
        self.retiring = False  # told to exit: gets no more work
        self.actor_id = b""  # set for an actor's dedicated executor (never part of the pool)
        self.actor_cpus = 0.0
        self.blocked = False

    @property
    def idle(self) -> bool:
        return self.connected and not self.runs and not self.retiring and not self.actor_id

    @property
    def run(self) -> pb.Run | None:
        return self.runs[0] if self.runs else None

    def pipelines(self) -> bool:
        """Whether short tasks may queue behind the one it runs (blocked, retiring and actor
        executors take none)."""
        return self.connected and not self.blocked and not self.retiring and not self.actor_id

    def stealable(self) -> list[pb.Run]:
        """Runs queued behind the running one that are not being asked back already."""
        if self.actor_id or not self.connected:
            return []
        return [r for r in itertools.islice(self.runs, 1, None) if r.spec.task_id not in self.recalled]

    def has_stealable(self) -> bool:
        """``bool(self.stealable())``, without building the list."""
        if self.actor_id or not self.connected or len(self.runs) < 2:
            return False
        return any(r.spec.task_id not in self.recalled for r in itertools.islice(self.runs, 1, None))


class PoolSink(Protocol):
    def run(self, slot: Slot, run: pb.Run) -> None:
        """Send ``run`` to the executor (it queues it behind what it has)."""

    def recall(self, slot: Slot, task_ids: list[bytes]) -> None:
        """Ask the executor to hand these back unstarted (it answers with ``returned``)."""

    def spawn(self) -> None:
        """Start one more pool executor (it is added with ``Pool.add``)."""

    def to_head(self, op: pb.NodeToHeadOp) -> None:
        """Send an operation to the head."""

    def report(self, op: pb.NodeToHeadOp) -> None:
        """Send a state report to the head, one that a newer report of the same kind replaces and
        that may wait a few milliseconds for other operations to travel with."""


class Pool:
    def __init__(self, num_cpus: float, pool_size: int, max_executors: int, sink: PoolSink,
                 clock: Callable[[], float] = time.monotonic, hand_back: bool = True) -> None:
        self.num_cpus = num_cpus
        self.clock = clock
        self.hand_back = hand_back  # stuck work may go back to the head (off: a node alone, local)
        self.pool_size = pool_size
        self.max_executors = max_executors
        self.sink = sink
        self.free_cpus = num_cpus
        self.queue: collections.deque[pb.Run] = collections.deque()
        self.slots: dict[int, Slot] = {}
        self.durations: dict[bytes, float] = {}  # function id -> recent run time (moving average)
        self.head_recalls: set[bytes] = set()  # the head asked these back; they go to it when returned
        self.overtaken: dict[bytes, int] = {}  # task id -> how often a later task started before it
        self.starting = 0  # pool executors spawned and not connected yet
        self.draining = False
        self.running_reported = 0
        self.waiting_since: float | None = None  # unstarted work waiting, no task done since then
        self.handbacks = 0  # stuck hand-backs since a task last finished here
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT)  # run times, latest last

    # ------------------------------------------------------------------ executors come and go

    def add(self, slot: Slot) -> None:
        """A new executor was spawned (not connected yet)."""
        self.slots[slot.id] = slot
        if not slot.actor_id:
            self.starting += 1

    def connected(self, slot: Slot) -> None:
        slot.connected = True
        if not slot.actor_id:
            self.starting -= 1

    def spawn_failed(self, slot: Slot) -> None:
        self.slots.pop(slot.id, None)
        if not slot.actor_id:
            self.starting -= 1

    def exited_unconnected(self, slot: Slot) -> None:
        """It died before connecting."""
        if not slot.actor_id:
            self.starting -= 1

    def gone(self, slot: Slot) -> pb.Run | None:
        """The executor's process is gone. Runs it never started go back (to the queue, or to the
        head if recalled); returns the run it was running (the server reports how it ended)."""
        if self.slots.get(slot.id) is not slot:
            return None
        del self.slots[slot.id]
        if slot.actor_id:
            self.free_cpus += slot.actor_cpus
            return None
        run = slot.run
        if run is not None:
            slot.runs.popleft()
            self._take_back(list(slot.runs))
            slot.runs.clear()
            slot.recalled.clear()
            if not slot.blocked:
                self.free_cpus += run.spec.resources.cpus
            else:
                self.sink.to_head(pb.NodeToHeadOp(blocked=pb.Blocked(
                    task_id=run.spec.task_id, blocked=False, cpus=run.spec.resources.cpus)))
        return run

    def actor_started(self, slot: Slot, cpus: float) -> None:
        """An actor's process: it holds ``cpus`` for its life."""
        slot.actor_cpus = cpus
        self.free_cpus -= cpus

    def pool_count(self) -> int:
        return sum(1 for s in self.slots.values() if not s.actor_id and not s.retiring)

    def active_count(self) -> int:
        """Executors that could run work: blocked ones don't count (they wait on work queued here)."""
        return sum(1 for s in self.slots.values() if not s.actor_id and not s.retiring and not s.blocked)

    def running(self) -> int:
        return sum(1 for s in self.slots.values() if s.runs)

    # ------------------------------------------------------------------ from the head

    def submit(self, run: pb.Run) -> None:
        if self.draining:  # sent before the head heard that we drain: it places it elsewhere
            self._not_started(run.spec.task_id)
            return
        if run.spec.parent_task_id:  # nested: its parent may be waiting for it (see scheduler)
            self.queue.appendleft(run)
        else:
            self.queue.append(run)

    def head_recall(self, task_ids) -> None:
        """The head wants these back unstarted (another node has idle CPUs). Those still in the
        queue go back at once; those queued on an executor are asked back from it and go to the
        head when it returns them. Started ones run on: the head hears of them as usual."""
        wanted = set(task_ids)
        for run in [r for r in self.queue if r.spec.task_id in wanted]:
            self.queue.remove(run)
            self.overtaken.pop(run.spec.task_id, None)
            self._not_started(run.spec.task_id)
        for slot in self.slots.values():
            if slot.actor_id:
                continue
            ask = [r.spec.task_id for r in list(slot.runs)[1:] if r.spec.task_id in wanted]
            if ask:
                self.head_recalls.update(ask)
                self._recall(slot, [t for t in ask if t not in slot.recalled])

    def drop_queued(self, task_id: bytes) -> bool:
        """Cancel a task still in the node's queue; False if it is not there."""
        for run in self.queue:
            if run.spec.task_id == task_id:
                self.queue.remove(run)
                self.overtaken.pop(task_id, None)
                return True
        return False

    def drain(self) -> None:
        """Take no more work: queued tasks go back to the head unstarted, and so do those queued on
        executors (asked back; what started runs to its end)."""
        self.draining = True
        for run in self.queue:
            self._not_started(run.spec.task_id)
        self.queue.clear()
        self.overtaken.clear()
        for slot in self.slots.values():
            self._recall(slot, [r.spec.task_id for r in slot.stealable()])

    def clear(self) -> None:
        """The head is gone: forget its work (it retries it)."""
        self.queue.clear()
        self.head_recalls.clear()
        self.overtaken.clear()

    # ------------------------------------------------------------------ from executors

    def done(self, slot: Slot, done: pb.TaskDone) -> None:
        slot.recalled.discard(done.task_id)
        self.head_recalls.discard(done.task_id)
        if slot.actor_id:
            call = next((r for r in slot.runs if r.spec.task_id == done.task_id), None)
            if call is not None:
                slot.runs.remove(call)
            return
        run = slot.run
        if run is not None and run.spec.task_id == done.task_id:
            slot.runs.popleft()
            self.handbacks = 0  # progress: the node is not stuck
            if self.waiting_since is not None:
                self.waiting_since = self.clock()
            if slot.blocked:  # normally unblocked before it finishes; keep the books right anyway
                slot.blocked = False
                self.free_cpus -= run.spec.resources.cpus
                self.sink.to_head(pb.NodeToHeadOp(blocked=pb.Blocked(
                    task_id=run.spec.task_id, blocked=False, cpus=run.spec.resources.cpus)))
            if not slot.runs:
                self.free_cpus += run.spec.resources.cpus
            if done.failure == pb.TaskDone.NONE:
                fid = run.spec.function_id
                previous = self.durations.get(fid)
                self.durations[fid] = done.duration_s if previous is None else 0.7 * previous + 0.3 * done.duration_s
                self.recent.append(done.duration_s)
        else:  # a queued task the executor dropped (cancelled before it started)
            for queued in list(slot.runs)[1:]:
                if queued.spec.task_id == done.task_id:
                    slot.runs.remove(queued)
                    break

    def returned(self, slot: Slot, task_ids) -> None:
        """The executor hands these back unstarted (recalled, or it blocked with work queued)."""
        returned = set(task_ids)
        slot.recalled -= returned
        # Any of its runs, the first too: the node counts that one as running once the one before
        # it is done, but the executor may hand it back before starting it.
        had = slot.run
        back = [r for r in slot.runs if r.spec.task_id in returned]
        for r in back:
            slot.runs.remove(r)
        if had is not None and not slot.runs and not slot.actor_id:
            self.free_cpus += had.spec.resources.cpus
        self._take_back(back)

    def blocked(self, slot: Slot, blocked: bool) -> None:
        """The running task waits in get()/wait() (its CPU is lent to other work) or goes on."""
        run = slot.run
        if run is None or slot.blocked == blocked:
            return
        slot.blocked = blocked
        cpus = run.spec.resources.cpus
        self.free_cpus += cpus if blocked else -cpus
        self.sink.to_head(pb.NodeToHeadOp(blocked=pb.Blocked(task_id=run.spec.task_id, blocked=blocked, cpus=cpus)))

    # ------------------------------------------------------------------ placement

    def pump(self) -> None:
        """Start queued tasks while CPUs allow (starting executors when needed), pipeline short
        ones behind running ones of the same size, and let idle executors steal."""
        if self.draining:
            return
        self._place()
        self._steal()
        if not self.queue and not any(s.has_stealable() for s in self.slots.values()):
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = self.clock()
        running = sum(1 for s in self.slots.values() if s.runs and not s.actor_id)
        if running != self.running_reported:  # the head's status tells running from queued
            self.running_reported = running
            self.sink.report(pb.NodeToHeadOp(running=running))

    def _place(self) -> None:
        """In order; a task that can't start yet doesn't hold up those behind it that can, unless it
        has been overtaken MAX_OVERTAKEN times already."""
        if not self.queue:
            return
        # Lines down to PIPELINE_REFILL when the pass began: they are topped up in this pass.
        refill = [s for s in self.slots.values() if len(s.runs) <= PIPELINE_REFILL and s.pipelines()]
        if not refill and not self._may_spawn():  # (an idle executor is a line of 0)
            return  # nothing could be placed: the common case while every executor is busy
        waiting: list[pb.Run] = []  # looked at, can't start yet (kept in order)
        # What could not be placed in this pass since the last placement: (cpus, gpus, function).
        # Nothing changed in between, so a task of the same shape can't be placed either.
        stuck: set[tuple[float, float, bytes]] = set()
        while self.queue and len(waiting) < LOOK_PAST:
            run = self.queue.popleft()
            resources = run.spec.resources
            cpus = resources.cpus
            shape = (cpus, resources.gpus, run.spec.function_id)
            target: Slot | None = None
            if shape not in stuck:
                if cpus <= self.free_cpus + EPS:
                    target = next((s for s in self.slots.values() if s.idle), None)
                    if target is not None:
                        self.free_cpus -= cpus
                    elif self.starting == 0 and self.active_count() < self.max_executors:
                        self.sink.spawn()
                if target is None:
                    target = self._pipeline_target(run, refill)
            if target is None:
                stuck.add(shape)
                waiting.append(run)
                if self._starving(run):
                    break  # CPUs that free up are kept for it
                continue
            stuck.clear()
            for earlier in waiting:
                tid = earlier.spec.task_id
                self.overtaken[tid] = self.overtaken.get(tid, 0) + 1
            self.overtaken.pop(run.spec.task_id, None)
            target.runs.append(run)
            self.sink.run(target, run)
        self.queue.extendleft(reversed(waiting))

    def _may_spawn(self) -> bool:
        """Whether a pass could start an executor: one of the tasks it looks at fits the free CPUs,
        and no executor is starting already."""
        if self.starting or self.active_count() >= self.max_executors:
            return False
        free = self.free_cpus + EPS
        return any(run.spec.resources.cpus <= free for run in itertools.islice(self.queue, LOOK_PAST))

    def _starving(self, run: pb.Run) -> bool:
        """Overtaken too often, and able to start here once running tasks finish."""
        if self.overtaken.get(run.spec.task_id, 0) < MAX_OVERTAKEN:
            return False
        actor_cpus = sum(s.actor_cpus for s in self.slots.values() if s.actor_id)
        return run.spec.resources.cpus <= self.num_cpus - actor_cpus + EPS

    def _pipeline_target(self, run: pb.Run, refill: list[Slot]) -> Slot | None:
        """The line (among ``refill``) with the fewest tasks that a short task may join, or None."""
        duration = self.durations.get(run.spec.function_id)
        if duration is None or duration > SHORT_TASK_S or run.spec.resources.gpus:
            return None
        best = None
        for slot in refill:
            first = slot.run
            if (
                first is None or not slot.pipelines() or len(slot.runs) >= PIPELINE_DEPTH
                or first.spec.resources.cpus != run.spec.resources.cpus or first.spec.resources.gpus
            ):
                continue
            if best is None or len(slot.runs) < len(best.runs):
                best = slot
        return best

    def _steal(self) -> None:
        """No hidden queue while a CPU is idle: an idle executor (nothing in the queue could start
        on it) takes (half of) the runs queued behind the busiest executor. The executor decides
        what it still has (a run may have started meanwhile); what it hands back is placed again."""
        if self.free_cpus <= EPS:
            return
        idle = sum(1 for s in self.slots.values() if s.idle)
        if not idle or (self.overtaken and max(self.overtaken.values()) >= MAX_OVERTAKEN
                        and any(self._starving(run) for run in self.queue)):
            return
        for _ in range(idle):
            victim = max(self.slots.values(), key=lambda s: len(s.stealable()), default=None)
            queued = victim.stealable() if victim is not None else []
            if victim is None or not queued:
                return
            take = queued[len(queued) // 2:]  # the tail: the head of the line starts next there anyway
            self._recall(victim, [r.spec.task_id for r in take])

    # ------------------------------------------------------------------ stuck work

    def stuck_at(self) -> float | None:
        """When the unstarted work here counts as stuck (the server calls :meth:`hand_back_stuck`
        then), or None: nothing waits, the node drains, or no task has finished here yet (the
        head's recall covers that)."""
        if self.waiting_since is None or self.draining or not self.recent or not self.hand_back:
            return None
        typical = sorted(self.recent)[len(self.recent) // 2]
        wait = min(STUCK_MAX_S, max(STUCK_MIN_S, STUCK_FACTOR * typical) * 2 ** self.handbacks)
        return self.waiting_since + wait

    def hand_back_stuck(self) -> int:
        """If the unstarted work is stuck (see :meth:`stuck_at`), hand all of it back to the head
        unstarted, without waiting to be asked: those in the queue at once, those in executors'
        lines once the executor returns them (one it started meanwhile runs on). Returns how many."""
        due = self.stuck_at()
        if due is None or self.clock() < due:
            return 0
        count = len(self.queue)
        for run in self.queue:
            self.overtaken.pop(run.spec.task_id, None)
            self._not_started(run.spec.task_id)
        self.queue.clear()
        for slot in self.slots.values():
            ask = [r.spec.task_id for r in slot.stealable()]
            count += len(ask)
            self.head_recalls.update(ask)
            self._recall(slot, ask)
        self.handbacks += 1
        self.waiting_since = None  # nothing unstarted is left here (what the executors return goes on)
        return count

    def _recall(self, slot: Slot, task_ids: list[bytes]) -> None:
        if task_ids:
            slot.recalled.update(task_ids)
            self.sink.recall(slot, task_ids)

    def _take_back(self, runs: list[pb.Run]) -> None:
        """Runs an executor never started: to the head if it asked for them (or the node is
        draining), else to the front of the queue, in their order."""
        keep = []
        for run in runs:
            if run.spec.task_id in self.head_recalls or self.draining:
                self._not_started(run.spec.task_id)
            else:
                keep.append(run)
        self.queue.extendleft(reversed(keep))

    def _not_started(self, task_id: bytes) -> None:
        self.head_recalls.discard(task_id)
        self.sink.to_head(pb.NodeToHeadOp(done=pb.TaskDone(task_id=task_id, failure=pb.TaskDone.NOT_STARTED)))

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError if the books disagree: every task in exactly one place, tasks never
        started on more CPUs than the node has, free CPUs = total - running - held by actors (an
        actor may start while tasks run: then free CPUs are negative until enough tasks finish)."""
        seen: set[bytes] = set()
        for run in self.queue:
            assert run.spec.task_id not in seen, "a task queued twice"
            seen.add(run.spec.task_id)
        in_use = task_cpus = 0.0
        for slot in self.slots.values():
            for run in slot.runs:
                assert run.spec.task_id not in seen, f"task {run.spec.task_id.hex()} in two places"
                seen.add(run.spec.task_id)
            assert slot.recalled <= {r.spec.task_id for r in slot.runs}, "recalling a run the executor lacks"
            if slot.actor_id:
                in_use += slot.actor_cpus
            elif slot.runs and not slot.blocked:
                in_use += slot.runs[0].spec.resources.cpus
                task_cpus += slot.runs[0].spec.resources.cpus
                assert len({r.spec.resources.cpus for r in slot.runs}) == 1, "pipelined runs of another size"
            assert len(slot.runs) <= PIPELINE_DEPTH or slot.actor_id, "pipelined too deep"
        assert self.head_recalls <= seen, "the head's recall names a task the node does not hold"
        assert abs(self.free_cpus - (self.num_cpus - in_use)) < 1e-6, f"free {self.free_cpus}, in use {in_use}"
        assert task_cpus <= self.num_cpus + 1e-6, "tasks started on more CPUs than the node has"
        assert self.starting >= 0
