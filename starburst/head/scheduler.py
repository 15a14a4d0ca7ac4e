"""The head's scheduler: tasks, their dependencies and retries, the object directory, placement.

Everything here runs on the head's event loop and does no I/O itself: incoming batches are applied
with ``on_client_ops`` / ``on_node_ops`` and outgoing operations are queued on :class:`Sink` objects
(sessions and nodes), which the server flushes once per incoming batch. That keeps the state machine
testable and makes every reply batch as large as the work allows.
"""

from __future__ import annotations

import collections
import logging
import pickle
import time
from typing import Callable, Iterable

from .._proto import starburst_pb2 as pb
from ..exceptions import (
    ObjectLostError,
    RaySystemError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ..serialization import serialize
from ..store import ObjectStore

log = logging.getLogger("starburst.head")

#: A node may hold this many tasks per CPU (running + queued there), so its executors never wait
#: for the head. Tasks known to be short (their function's recent run time) are sent deeper; long
#: ones shallow, so that one node doesn't sit on work another could start.
PREFETCH_PER_CPU = 2.0
PREFETCH_PER_CPU_SHORT = 16.0
SHORT_TASK_S = 0.005
#: When a stream has more results coming, a batch waits at least LINGER_S and is written at most
#: every WINDOW_S, so that a busy stream carries few large messages (each write costs ~0.2 ms of
#: CPU) while a lone result is never delayed.
LINGER_S = 0.001
WINDOW_S = 0.005


class Sink:
    """Something the head sends batches to: a client session or a node."""

    def __init__(self, scheduler: "Scheduler") -> None:
        self._scheduler = scheduler
        self._pending: list = []

    def push(self, op) -> None:
        if not self._pending:
            self._scheduler.dirty.append(self)
        self._pending.append(op)

    def take(self) -> list:
        ops, self._pending = self._pending, []
        return ops

    def deliver(self, ops: list) -> None:  # implemented by the transport-specific subclass
        raise NotImplementedError


class Session(Sink):
    """A driver's session, or an executor's session relayed through its node."""

    def __init__(self, scheduler: "Scheduler", session_id: str, deliver: Callable[[list], None]) -> None:
        super().__init__(scheduler)
        self.session_id = session_id
        self.job_id = ""
        self.kind = "driver"
        self.log_to_driver = True
        self.namespace = ""
        self.pid = 0
        self.held: set[bytes] = set()
        self.outstanding = 0  # tasks submitted by this session and not finished
        self.closed = False
        self._deliver = deliver

    def deliver(self, ops: list) -> None:
        if not self.closed:
            self._deliver(ops)


class Node(Sink):
    """The head's view of one node: its resources, what runs there, what it has been sent."""

    def __init__(self, scheduler: "Scheduler", node_id: str, hello: pb.NodeHello, deliver: Callable) -> None:
        super().__init__(scheduler)
        self.node_id = node_id
        self.hello = hello
        self.total = {"CPU": hello.resources.cpus, "GPU": hello.resources.gpus, **hello.resources.custom}
        self.used: dict[str, float] = collections.defaultdict(float)
        self.blocked_cpus = 0.0
        self.inflight: dict[bytes, "Task"] = {}
        self.functions: set[bytes] = set()
        self.executors = 0
        self.alive = True
        self._deliver = deliver

    def deliver(self, ops: list) -> None:
        if self.alive:
            self._deliver(ops)

    def has_room(self, short: bool = True) -> bool:
        depth = PREFETCH_PER_CPU_SHORT if short else PREFETCH_PER_CPU
        return len(self.inflight) < depth * max(self.total["CPU"], 1.0) + self.blocked_cpus + 1

    def fits(self, want: dict[str, float], short: bool) -> bool:
        if not self.has_room(short):
            return False
        factor = PREFETCH_PER_CPU_SHORT if short else PREFETCH_PER_CPU
        for name, qty in want.items():
            if not qty:
                continue
            total = self.total.get(name, 0.0)
            if name == "CPU":
                total = total * factor + self.blocked_cpus
            if self.used[name] + qty > total + 1e-9:
                return False
        return True

    def load(self) -> float:
        return len(self.inflight) / max(self.total["CPU"], 1.0)


class Obj:
    __slots__ = ("id", "value", "refs", "subscribers", "dependents", "pinned")

    def __init__(self, object_id: bytes) -> None:
        self.id = object_id
        self.value: pb.Value | None = None
        self.refs = 0
        self.subscribers: list[Session] = []
        self.dependents: list[Task] = []
        self.pinned: list[bytes] = []  # refs contained in the value, kept alive by it


class Task:
    __slots__ = ("spec", "owner", "waiting", "node", "state", "children", "want", "submitted")

    WAITING, QUEUED, RUNNING, DONE = range(4)

    def __init__(self, spec: pb.TaskSpec, owner: Session) -> None:
        self.spec = spec
        self.owner = owner
        self.waiting = 0
        self.node: Node | None = None
        self.state = Task.WAITING
        self.children: set[bytes] = set()
        r = spec.resources
        self.want = {"CPU": r.cpus, "GPU": r.gpus, **r.custom}
        self.submitted = time.monotonic()


def error_value(error: BaseException) -> pb.Value:
    return pb.Value(inline=serialize(error).to_bytes(), is_error=True)


class Scheduler:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.functions: dict[bytes, pb.Function] = {}
        self.durations: dict[bytes, float] = {}  # function id -> recent run time (moving average)
        self.objects: dict[bytes, Obj] = {}
        self.tasks: dict[bytes, Task] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.nodes: list[Node] = []
        self.sessions: dict[str, Session] = {}
        self.dirty: list[Sink] = []
        self.tasks_finished = 0
        self.started = time.monotonic()

    # ------------------------------------------------------------------ batching

    def flush(self) -> None:
        """Send every queued operation, one batch per session or node."""
        while self.dirty:
            sinks, self.dirty = self.dirty, []
            for sink in sinks:
                ops = sink.take()
                if ops:
                    sink.deliver(ops)

    # ------------------------------------------------------------------ sessions

    def open_session(self, session: Session) -> None:
        self.sessions[session.session_id] = session

    def close_session(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.session_id, None)
        for object_id in list(session.held):
            self._unref(object_id)
        session.held.clear()
        # Work whose results nobody holds any more is stopped; a task whose result someone else
        # holds (e.g. a ref returned inside another task's result) goes on without its submitter.
        for task in [t for t in self.tasks.values() if t.owner is session]:
            if all(self._unheld(rid) for rid in task.spec.return_ids):
                self._cancel_task(task, force=True, recursive=True)
        self._dispatch()

    def _unheld(self, object_id: bytes) -> bool:
        obj = self.objects.get(object_id)
        return obj is None or obj.refs <= 0

    def on_client_ops(self, session: Session, ops: Iterable[pb.ClientOp]) -> None:
        for op in ops:
            kind = op.WhichOneof("op")
            if kind == "submit":
                self._submit(session, op.submit)
            elif kind == "release":
                if op.release in session.held:
                    session.held.discard(op.release)
                    self._unref(op.release)
            elif kind == "put":
                self._put(session, op.put)
            elif kind == "function":
                self.functions.setdefault(op.function.id, op.function)
            elif kind == "subscribe":
                self._subscribe(session, op.subscribe)
            elif kind == "add_ref":
                obj = self.objects.get(op.add_ref)
                if obj is not None and op.add_ref not in session.held:
                    session.held.add(op.add_ref)
                    obj.refs += 1
            elif kind == "cancel":
                task = self.tasks.get(op.cancel.object_id[:16])
                if task is not None:
                    self._cancel_task(task, op.cancel.force, op.cancel.recursive)
            elif kind == "hello":
                h = op.hello
                session.kind, session.pid = h.kind or "driver", h.pid
                session.log_to_driver, session.namespace = h.log_to_driver, h.namespace
                session.job_id = h.job_id or session.session_id
                session.push(pb.HeadOp(welcome=self.welcome(session)))
            elif kind == "blocked":  # only executors block, and they tell their node instead
                pass
        self._dispatch()

    def welcome(self, session: Session) -> pb.Welcome:
        w = pb.Welcome(
            session_id=session.session_id, job_id=session.job_id, store_url=self.store.url,
        )
        largest: dict[str, float] = {}
        for node in self.nodes:
            r = node.hello.resources
            w.total.cpus += r.cpus
            w.total.gpus += r.gpus
            w.total.memory += r.memory
            for k, v in r.custom.items():
                w.total.custom[k] = w.total.custom[k] + v
            for k, v in node.total.items():
                largest[k] = max(largest.get(k, 0.0), v)
            w.largest_node.memory = max(w.largest_node.memory, r.memory)
        w.largest_node.cpus = largest.pop("CPU", 0.0)
        w.largest_node.gpus = largest.pop("GPU", 0.0)
        for k, v in largest.items():
            w.largest_node.custom[k] = v
        return w

    # ------------------------------------------------------------------ objects

    def _obj(self, object_id: bytes) -> Obj:
        obj = self.objects.get(object_id)
        if obj is None:
            obj = self.objects[object_id] = Obj(object_id)
        return obj

    def _put(self, session: Session, put: pb.Object) -> None:
        obj = self._obj(put.id)
        obj.refs += 1
        session.held.add(put.id)
        self._set_value(obj, put.value)

    def _subscribe(self, session: Session, object_id: bytes) -> None:
        obj = self.objects.get(object_id)
        if obj is None:
            lost = ObjectLostError(object_id.hex())
            session.push(pb.HeadOp(ready=pb.Object(id=object_id, value=error_value(lost))))
        elif obj.value is not None:
            session.push(pb.HeadOp(ready=pb.Object(id=object_id, value=obj.value)))
        elif session not in obj.subscribers:
            obj.subscribers.append(session)

    def _set_value(self, obj: Obj, value: pb.Value) -> None:
        obj.value = value
        for contained in value.contained:
            inner = self.objects.get(contained)
            if inner is not None:
                inner.refs += 1
                obj.pinned.append(contained)
        if obj.subscribers:
            op = pb.HeadOp(ready=pb.Object(id=obj.id, value=value))
            for session in obj.subscribers:
                if not session.closed:
                    session.push(op)
            obj.subscribers = []
        if obj.dependents:
            dependents, obj.dependents = obj.dependents, []
            for task in dependents:
                if task.state != Task.WAITING:
                    continue
                if value.is_error:
                    self._fail(task, value)
                else:
                    task.waiting -= 1
                    if task.waiting == 0:
                        self._enqueue(task)
        if obj.refs <= 0:
            self._free(obj)

    def _unref(self, object_id: bytes) -> None:
        obj = self.objects.get(object_id)
        if obj is None:
            return
        obj.refs -= 1
        if obj.refs <= 0:
            self._free(obj)

    def _free(self, obj: Obj) -> None:
        if self.objects.get(obj.id) is not obj:
            return
        if obj.value is None and (obj.dependents or obj.subscribers):
            return  # still awaited; freed when its value arrives
        del self.objects[obj.id]
        if obj.value is not None and obj.value.WhichOneof("where") == "key":
            self._delete_key(obj.value.key)
        for contained in obj.pinned:
            self._unref(contained)

    def _delete_key(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception:  # noqa: BLE001 - a failed delete leaves garbage, not a wrong result
            log.exception("could not delete object %s", key)

    # ------------------------------------------------------------------ tasks

    def _submit(self, session: Session, spec: pb.TaskSpec) -> None:
        if not spec.job_id:
            spec.job_id = session.job_id
        task = Task(spec, session)
        self.tasks[spec.task_id] = task
        session.outstanding += 1
        for rid in spec.return_ids:
            obj = self._obj(rid)
            obj.refs += 1
            session.held.add(rid)
            obj.subscribers.append(session)
        parent = self.tasks.get(spec.parent_task_id) if spec.parent_task_id else None
        if parent is not None:
            parent.children.add(spec.task_id)
        for object_id in list(spec.args.contained) + list(spec.deps):
            obj = self.objects.get(object_id)
            if obj is not None:
                obj.refs += 1
        if spec.function_id not in self.functions:
            self._fail(task, error_value(RaySystemError(f"function of task {spec.name} was never sent")))
            return
        for object_id in set(spec.deps):
            obj = self.objects.get(object_id)
            if obj is None:
                self._fail(task, error_value(ObjectLostError(object_id.hex())))
                return
            if obj.value is None:
                obj.dependents.append(task)
                task.waiting += 1
            elif obj.value.is_error:
                self._fail(task, obj.value)
                return
        if task.waiting == 0:
            self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        """Ready to run. Tasks submitted by running tasks go first: their parents may be waiting for
        them, holding executors, so depth-first order is what keeps a pool of parents moving."""
        task.state = Task.QUEUED
        if task.spec.parent_task_id:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)

    def _fail(self, task: Task, value: pb.Value) -> None:
        """Finish ``task`` with ``value`` (an error) as every one of its results."""
        if task.state == Task.DONE:
            return
        self._finish(task, [pb.Object(id=rid, value=value) for rid in task.spec.return_ids])

    def _finish(self, task: Task, results: Iterable[pb.Object]) -> None:
        if task.state == Task.QUEUED:
            try:
                self.queue.remove(task)
            except ValueError:
                pass
        task.state = Task.DONE
        task.owner.outstanding -= 1
        self.tasks.pop(task.spec.task_id, None)
        self.tasks_finished += 1
        for result in results:
            obj = self.objects.get(result.id)
            if obj is None or obj.value is not None:
                # Nobody holds this result any more: drop its stored value right away.
                if result.value.WhichOneof("where") == "key" and obj is None:
                    self._delete_key(result.value.key)
                continue
            self._set_value(obj, result.value)
        spec = task.spec
        for object_id in list(spec.args.contained) + list(spec.deps):
            self._unref(object_id)
        if spec.args.WhichOneof("where") == "key":
            self._delete_key(spec.args.key)
        parent = self.tasks.get(spec.parent_task_id) if spec.parent_task_id else None
        if parent is not None:
            parent.children.discard(spec.task_id)

    def _cancel_task(self, task: Task, force: bool, recursive: bool) -> None:
        if recursive:
            for child_id in list(task.children):
                child = self.tasks.get(child_id)
                if child is not None:
                    self._cancel_task(child, force, recursive)
        if task.state in (Task.WAITING, Task.QUEUED):
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())))
        elif task.state == Task.RUNNING and task.node is not None:
            task.node.push(pb.HeadToNodeOp(cancel=pb.Cancel(object_id=task.spec.task_id, force=force)))

    def _retries_left(self, task: Task) -> bool:
        return task.spec.max_retries < 0 or task.spec.attempt < task.spec.max_retries

    def _requeue(self, task: Task) -> None:
        task.spec.attempt += 1
        task.state = Task.QUEUED
        task.node = None
        self.queue.appendleft(task)

    # ------------------------------------------------------------------ nodes

    def add_node(self, node: Node) -> None:
        self.nodes.append(node)
        self._dispatch()

    def remove_node(self, node: Node, reason: str) -> None:
        """The node is gone: whatever ran there is retried elsewhere (or fails without retries)."""
        if node not in self.nodes:
            return
        node.alive = False
        self.nodes.remove(node)
        for task in list(node.inflight.values()):
            self._task_lost(task, f"the node running it was lost ({reason})")
        node.inflight.clear()
        self._dispatch()

    def _task_lost(self, task: Task, why: str) -> None:
        if task.state != Task.RUNNING:
            return
        if self._retries_left(task):
            self._requeue(task)
        else:
            self._fail(task, error_value(WorkerCrashedError(f"{task.spec.name}: {why}; no retries left")))

    def on_node_ops(self, node: Node, ops: Iterable[pb.NodeToHeadOp], relay: Callable) -> None:
        for op in ops:
            kind = op.WhichOneof("op")
            if kind == "done":
                self._task_done(node, op.done)
            elif kind == "log":
                self._route_log(op.log)
            elif kind == "relay":
                relay(node, op.relay)
            elif kind == "blocked":
                delta = op.blocked.cpus if op.blocked.blocked else -op.blocked.cpus
                node.blocked_cpus = max(0.0, node.blocked_cpus + delta)
            elif kind == "executors":
                node.executors = op.executors
        self._dispatch()

    def _route_log(self, entry: pb.Log) -> None:
        session = self.sessions.get(entry.job_id)
        if session is not None and session.log_to_driver:
            session.push(pb.HeadOp(log=entry))

    def _task_done(self, node: Node, done: pb.TaskDone) -> None:
        task = node.inflight.pop(done.task_id, None)
        if task is None:
            return
        for name, qty in task.want.items():
            node.used[name] -= qty
        if task.state != Task.RUNNING:
            return
        if done.failure == pb.TaskDone.NONE:
            fid = task.spec.function_id
            previous = self.durations.get(fid)
            self.durations[fid] = done.duration_s if previous is None else 0.7 * previous + 0.3 * done.duration_s
        if done.failure == pb.TaskDone.WORKER_DIED:
            self._task_lost(task, done.detail or "its worker process died")
        elif done.failure == pb.TaskDone.CANCELLED:
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())))
        elif done.retryable and self._retries_left(task):
            self._requeue(task)
        else:
            self._finish(task, done.results)

    def _pick_node(self, task: Task) -> Node | None:
        best = None
        duration = self.durations.get(task.spec.function_id)
        short = duration is not None and duration < SHORT_TASK_S
        for node in self.nodes:
            if node.fits(task.want, short) and (best is None or node.load() < best.load()):
                best = node
        return best

    def _dispatch(self) -> None:
        if not self.queue or not self.nodes:
            return
        # A task that fits nowhere doesn't hold up smaller ones behind it, but we look only a few
        # tasks ahead: this runs after every incoming batch.
        skipped: list[Task] = []
        while self.queue and len(skipped) < 8:
            if not any(n.has_room() for n in self.nodes):
                break
            task = self.queue.popleft()
            node = self._pick_node(task)
            if node is None:
                skipped.append(task)
                continue
            self._run_on(task, node)
        self.queue.extendleft(reversed(skipped))

    def _run_on(self, task: Task, node: Node) -> None:
        spec = task.spec
        run = pb.Run(spec=spec)
        for object_id in spec.deps:
            obj = self.objects[object_id]
            run.deps.add(id=object_id, value=obj.value)
        if spec.function_id not in node.functions:
            node.functions.add(spec.function_id)
            run.function.CopyFrom(self.functions[spec.function_id])
        task.state = Task.RUNNING
        task.node = node
        node.inflight[spec.task_id] = task
        for name, qty in task.want.items():
            node.used[name] += qty
        node.push(pb.HeadToNodeOp(run=run))

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        running = sum(len(n.inflight) for n in self.nodes)
        return {
            "queued": len(self.queue) + sum(1 for t in self.tasks.values() if t.state == Task.WAITING),
            "running": running,
            "objects": len(self.objects),
            "object_bytes": sum(o.value.size for o in self.objects.values() if o.value is not None),
        }

    def drop_all_objects(self) -> None:
        """At shutdown: delete every stored value."""
        for obj in list(self.objects.values()):
            if obj.value is not None and obj.value.WhichOneof("where") == "key":
                self._delete_key(obj.value.key)
        self.objects.clear()


def unpickle_retry_exceptions(data: bytes):
    return pickle.loads(data) if data else False
