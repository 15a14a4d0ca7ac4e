"""The head's scheduler: tasks, their dependencies and retries, the object directory, placement.

Everything here runs on the head's event loop and does no I/O itself: incoming batches are applied
with ``on_client_ops`` / ``on_node_ops`` and outgoing operations are queued on :class:`Sink` objects
(sessions and nodes), which the server flushes once per incoming batch. That keeps the state machine
testable and makes every reply batch as large as the work allows.

Why one module of over 1,000 lines: it is one state machine. A task's placement, its retries, the
object directory's counts and an actor's resources change together in one step, and
``check_invariants`` checks them together; split across modules, each half would reach into the
other's state.
"""

from __future__ import annotations

import collections
import math
import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

from .. import _ids, config
from .._version import __version__
from .._proto import starburst_pb2 as pb
from ..exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ClusterStoppedError,
    ObjectLostError,
    RaySystemError,
    TaskCancelledError,
    WorkerCrashedError,
)
from .._memory import trim as trim_memory
from ..store import ObjectStore, error_value
from .functions import FunctionTable

if TYPE_CHECKING:
    from .observer import Observer

log = logging.getLogger("starburst.head")

#: A node may hold this many tasks per CPU (running + queued there), so its executors never wait
#: for the head. Tasks known to be short (their function's recent run time) are sent deeper; long
#: ones shallow, so that one node doesn't sit on work another could start.
PREFETCH_PER_CPU = 2.0
PREFETCH_PER_CPU_SHORT = 16.0
PREFETCH_PER_CPU_MAX = 64.0
SHORT_TASK_S = 0.005
#: A short task's next one comes back a round trip later, plus the batching windows of the node
#: (results) and of the head (runs): up to config.WINDOW_S each on a busy link. Short tasks are
#: prefetched deep enough to cover that at their run time (at least MIN_RUN_S: below it the
#: per-task overhead sets the pace), or the node runs dry while its results wait in the windows.
BATCH_LOOP_S = 2 * config.WINDOW_S
MIN_RUN_S = 0.0001
#: How many tasks that can't be placed now the head looks past for ones that can.
LOOK_PAST = 32
#: A node that has reported nothing done for this long (and 4x its tasks' run time plus a round
#: trip) while holding unstarted tasks is stuck behind something long: all of them are recalled,
#: and new work goes elsewhere if it fits.
STALL_MIN_S = 0.02
#: A function's typical run time is the median of its last this many calls.
RECENT_RUNS = 15
#: How long (and how many) ends of calls the head has not heard of yet are kept for them (see
#: ``Scheduler._early_dones``).
EARLY_DONE_S = 60.0
EARLY_DONES_MAX = 10_000
#: Once the tasks held fall to a tenth of a peak of at least this many, freed heap goes back to the OS.
TRIM_AFTER_TASKS = 1000


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
        self.total = {"CPU": hello.resources.cpus, "GPU": hello.resources.gpus, "memory": hello.resources.memory,
                      **hello.resources.custom}
        self._cpu_slots = max(self.total["CPU"], 1.0)  # tasks per unit of depth (``total`` never changes)
        #: Resources of the tasks sent here and not finished (running or queued at the node).
        self.used: dict[str, float] = collections.defaultdict(float)
        #: Resources live actors hold for their lifetime (never lent, never prefetched against).
        self.held: dict[str, float] = collections.defaultdict(float)
        self.running = 0  # tasks the node reports started (the rest of `inflight` is queued there)
        self.recalling: set[bytes] = set()  # asked back (recall sent, not answered yet)
        self.last_progress = 0.0  # when it last reported a task done (or was sent work while empty)
        self.returned_at = -1.0  # when it last handed a task back unstarted (NOT_STARTED)
        self.blocked_cpus = 0.0
        self.inflight: dict[bytes, "Task"] = {}
        self.actor_inflight: dict[bytes, "Task"] = {}  # actor calls: not counted against capacity
        self.functions: set[bytes] = set()
        self.executors = 0
        self.draining = False
        self.alive = True
        self.rtt = 0.0  # seconds, head <-> node (measured by the link: ping/pong)
        self._deliver = deliver

    def deliver(self, ops: list) -> None:
        if self.alive:
            self._deliver(ops)

    def depth(self, duration: float | None) -> float:
        """Tasks per CPU to keep in flight on this node for a function that runs ``duration``
        seconds (None: not known yet): enough queued at the node that a core never waits a round
        trip to the head for its next task, and few enough not to hoard work other nodes could do."""
        if duration is None:
            return PREFETCH_PER_CPU
        if duration < SHORT_TASK_S:
            need = math.ceil((self.rtt + BATCH_LOOP_S) / max(duration, MIN_RUN_S))
            return max(PREFETCH_PER_CPU_SHORT, min(PREFETCH_PER_CPU_MAX, need))
        return min(PREFETCH_PER_CPU_MAX, PREFETCH_PER_CPU + math.ceil(self.rtt / duration))

    def max_depth(self) -> float:
        """The deepest ``depth()`` this node can ask for (with its current round trip): the
        shortest tasks' (long ones ask for less)."""
        return max(self.depth(0.0), self.depth(SHORT_TASK_S))

    def has_room(self, depth: float) -> bool:
        if self.draining:
            return False
        return len(self.inflight) < depth * self._cpu_slots + self.blocked_cpus + 1

    def fits(self, want: dict[str, float], depth: float, actor: bool = False) -> bool:
        """Whether a task (``actor``: an actor's creation) asking for ``want`` may be sent here now.
        CPUs are prefetched ``depth`` deep (tasks queue at the node); other resources are hard: what
        is sent never adds up to more than the node has. What live actors hold is taken off first, and
        an actor's CPUs must be free of other actors' (tasks sent earlier run or wait at the node)."""
        if not self.has_room(depth):
            return False
        for name, qty in want.items():
            if not qty:
                continue
            total = self.total.get(name, 0.0) - self.held[name]
            if qty > total + 1e-9:
                return False  # can't start here until an actor lets go
            if name == "CPU":
                if actor:  # held from the start; tasks already sent here run or wait at the node
                    continue
                total = total * depth + self.blocked_cpus
            if self.used[name] + qty > total + 1e-9:
                return False
        return True

    def unstarted(self) -> int:
        """Tasks sent here that (by the node's last report) have not started."""
        return max(0, len(self.inflight) - self.running)

    def started(self) -> int:
        return len(self.inflight) - self.unstarted()

    def surplus(self) -> int:
        """Tasks sent here beyond what the node can be running (its report may lag: a task just sent
        to a free CPU is assumed started)."""
        slots = int(self.total["CPU"] - self.held["CPU"] + self.blocked_cpus + 1e-9)
        return max(0, len(self.inflight) - max(self.running, slots))

    def cpus_in_use(self) -> float:
        """CPUs held by actors plus those of running tasks (never more than the node has)."""
        total = self.total["CPU"]
        return min(total, self.held["CPU"] + min(self.used["CPU"], total - self.held["CPU"]))

    def idle_cpus(self) -> float:
        return self.total["CPU"] - self.held["CPU"] - self.used["CPU"] + self.blocked_cpus

    def load(self) -> float:
        return len(self.inflight) / self._cpu_slots


class Obj:
    # Tens of thousands are held during a burst: the lists are made when first needed (empty ones
    # cost the head's heap ~170 bytes an object, which CPython's allocator keeps after the burst).
    __slots__ = ("id", "value", "refs", "subscribers", "dependents", "pinned")

    def __init__(self, object_id: bytes) -> None:
        self.id = object_id
        self.value: pb.Value | None = None
        self.refs = 0
        self.subscribers: list[Session] | None = None
        self.dependents: list[Task] | None = None
        self.pinned: list[bytes] | None = None  # refs contained in the value, kept alive by it

    def subscribe(self, session: "Session") -> None:
        if self.subscribers is None:
            self.subscribers = [session]
        elif session not in self.subscribers:
            self.subscribers.append(session)


class Task:
    __slots__ = ("spec", "id", "function_id", "creation", "call", "deps", "inputs", "args_key", "parent_id", "owner",
                 "waiting", "node", "state", "children", "want", "submitted", "avoid", "uses", "streamed")
    #: state QUEUED: in the head's queue (or an actor's line); RUNNING: sent to ``node`` (it may
    #: still be queued there, unstarted: the node decides, and hands it back if recalled).

    WAITING, QUEUED, RUNNING, DONE = range(4)

    def __init__(self, spec: pb.TaskSpec, owner: Session) -> None:
        # What the hot paths ask of the spec, asked once (each protobuf access costs a call and,
        # for bytes and strings, a new object). The spec's fields read here never change.
        self.spec = spec
        self.id: bytes = spec.task_id
        self.function_id: bytes = spec.function_id  # the function table's copy once it counts as a user
        actor_id = spec.actor_id
        self.creation = bool(actor_id) and spec.HasField("actor")  # an actor's constructor
        self.call = bool(actor_id) and not self.creation  # a method call on an actor
        deps = spec.deps
        self.deps: tuple[bytes, ...] = tuple(deps) if deps else ()  # top-level ObjectRef arguments
        args = spec.args
        contained = args.contained
        self.inputs = (*contained, *self.deps) if contained else self.deps  # refs its inputs hold
        self.args_key: str = args.key  # its arguments' key in the store ("": inline)
        self.parent_id: bytes = spec.parent_task_id
        self.owner = owner
        self.waiting = 0
        self.node: Node | None = None
        self.state = Task.WAITING
        self.children: set[bytes] | None = None  # tasks it submitted that are not finished (made when needed)
        self.want = _wants(spec.resources)
        self.submitted = time.monotonic()
        self.avoid: Node | None = None  # recalled from this node: placed elsewhere if anywhere fits
        self.uses = False  # counted as a user of its function in the function table
        self.streamed = 0  # a streaming task's items the submitter got (a retry doesn't send them again)


class _EarlyDone(NamedTuple):
    """A call's end that came through a node before the head heard of the call (sent direct)."""
    node: Node
    done: pb.TaskDone
    at: float  # when it came (the head's clock): dropped after EARLY_DONE_S
    pins: list[bytes]  # refs inside its results, held until it is applied


_WANTS: dict[bytes, dict[str, float]] = {}


def _wants(r: pb.Resources) -> dict[str, float]:
    """The resources a task asks for, only those it asks for (zeros would cost a dict update per
    task on every node book-keeping step). The dict is shared by every task asking the same and
    must not be changed. Looked up by the message's bytes: one call, where reading its fields
    takes five."""
    key = r.SerializeToString()
    shared = _WANTS.get(key)
    if shared is None:
        if len(_WANTS) > 1024:  # e.g. memory sizes computed per task
            _WANTS.clear()
        shared = {name: qty for name, qty in (("CPU", r.cpus), ("GPU", r.gpus), ("memory", r.memory)) if qty}
        if r.custom:  # (``**r.custom`` on an empty protobuf map is surprisingly slow)
            shared.update(r.custom)
        _WANTS[key] = shared
    return shared


class Actor:
    """The head's record of one actor: where it lives and the calls waiting for it, in order."""

    PENDING, PLACED, ALIVE, RESTARTING, DEAD = "pending", "placed", "alive", "restarting", "dead"

    def __init__(self, creation: Task) -> None:
        spec = creation.spec
        self.id = spec.actor_id
        self.options = spec.actor
        self.namespace = spec.namespace
        self.creation = creation
        self.state = Actor.PENDING
        self.node: Node | None = None
        self.calls: collections.deque[Task] = collections.deque()  # submitted, not yet sent
        self.inflight: dict[bytes, Task] = {}
        self.lost: list[Task] = []  # calls whose process died; retried or failed on restart
        self.restarts = 0
        self.holding: Node | None = None  # the node whose resources this actor holds while it lives
        self.no_restart = False
        self.kill_reason = ""  # given with the kill (exit_actor): the text of its ActorDiedError
        self.terminating = False
        self.out_of_scope = False
        self.death: pb.Value | None = None
        self.uses = False  # counted as a user of its class in the function table

    @property
    def name(self) -> str:
        return self.options.name


class Scheduler:
    def __init__(self, store: ObjectStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.functions: FunctionTable[Session] = FunctionTable(self._forget_function, self._function_dropped)
        self._trim = False
        self._peak_tasks = 0  # the most tasks held at a settle() since memory was last trimmed
        #: Ends of calls the head does not know yet, by task id (node, TaskDone, when): a call sent
        #: straight to its actor whose result came through the node before its caller's word of it.
        self._early_dones: dict[bytes, _EarlyDone] = {}
        #: Direct calls whose process died before the head heard of their end: their caller's word
        #: (``direct_done``) says whether they were answered.
        self._awaiting_word: dict[bytes, Task] = {}
        #: Direct calls in flight whose caller said they were not answered (its connection broke).
        self._unanswered: set[bytes] = set()
        self.durations: dict[bytes, float] = {}  # function id -> typical run time (median of the recent)
        self._run_times: dict[bytes, collections.deque[float]] = {}
        self.objects: dict[bytes, Obj] = {}
        self.tasks: dict[bytes, Task] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.nodes: list[Node] = []
        self.actors: dict[bytes, Actor] = {}
        self.names: dict[tuple[str, str], bytes] = {}  # (namespace, name) -> actor id
        self.sessions: dict[str, Session] = {}
        self.dirty: list[Sink] = []
        self.tasks_finished = 0  # all that ended: with their results, failed or cancelled
        self.tasks_failed = 0
        self.tasks_cancelled = 0
        self.ran_on: collections.Counter[str] = collections.Counter()  # node id -> tasks that ran to their end there
        #: Sent to a node with a cancel asked since: if the node hands one back unstarted (recall,
        #: drain), the cancel wins.
        self.cancelling: set[bytes] = set()
        self.started = time.monotonic()
        #: The resources of nodes a provider can still start: tasks that fit them are accepted
        #: before any such node exists (an autoscaling cluster may start with none).
        self.node_shape: pb.Resources | None = None
        #: S3 use reported by the nodes' executors and by the drivers (bytes the drivers download
        #: leave AWS), and bytes received from nodes: the Fargate cost meter reads them.
        self.store_usage_nodes = pb.StoreUsage()
        self.store_usage_drivers = pb.StoreUsage()
        self.bytes_from_nodes = 0

        #: Told about output, task ends and finished tasks (``head/observer.py``); None: nobody.
        self.observer: Observer | None = None

    # ------------------------------------------------------------------ batching

    def flush(self) -> None:
        """Send every queued operation, one batch per session or node."""
        while self.dirty:
            sinks, self.dirty = self.dirty, []
            for sink in sinks:
                ops = sink.take()
                if ops:
                    sink.deliver(ops)
        if self.observer is not None:
            self.observer.flush()

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
        self.functions.close(session)
        # Work whose results nobody holds any more is stopped; a task whose result someone else
        # holds (e.g. a ref returned inside another task's result) goes on without its submitter.
        for task in [t for t in self.tasks.values() if t.owner is session]:
            if task.creation:
                continue  # an actor lives as long as its handles (or forever, if detached)
            if task.spec.direct and task.state in (Task.RUNNING, Task.WAITING):
                # Its result was to come back through this session only.
                self._direct_detach(task)
                self._fail(task, error_value(RaySystemError(
                    f"{task.spec.name} was sent straight to its actor by a driver that has gone: its "
                    "result went with it")))
                actor = self.actors.get(task.spec.actor_id)
                if actor is not None:
                    self._maybe_terminate(actor)  # (its last handle went with the session)
                continue
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
                self.functions.add(session, op.function)
            elif kind == "release_function":
                self.functions.release(session, op.release_function)
            elif kind == "ping":
                session.push(pb.HeadOp(pong=op.ping))
            elif kind == "subscribe":
                self._subscribe(session, op.subscribe)
            elif kind == "add_ref":
                obj = self.objects.get(op.add_ref)
                if obj is not None and op.add_ref not in session.held:
                    session.held.add(op.add_ref)
                    obj.refs += 1
            elif kind == "cancel":
                task = self.tasks.get(_ids.task_of(op.cancel.object_id))
                if task is not None:
                    self._cancel_task(task, op.cancel.force, op.cancel.recursive)
            elif kind == "hello":
                h = op.hello
                session.kind, session.pid = h.kind or "driver", h.pid
                session.log_to_driver, session.namespace = h.log_to_driver, h.namespace
                session.job_id = h.job_id or session.session_id
                session.push(pb.HeadOp(welcome=self.welcome(session)))
            elif kind == "request":
                session.push(pb.HeadOp(reply=self._request(session, op.request)))
            elif kind == "store_usage":
                _add_usage(self.store_usage_drivers if session.kind == "driver" else self.store_usage_nodes,
                           op.store_usage)
            elif kind == "direct_done":
                if op.direct_done.HasField("store_usage"):
                    _add_usage(self.store_usage_nodes, op.direct_done.store_usage)
                self._direct_done(session, op.direct_done)
            elif kind == "kill_actor":
                actor = self.actors.get(op.kill_actor.actor_id)
                if actor is not None:
                    actor.kill_reason = op.kill_actor.reason or actor.kill_reason
                    self._kill_actor(actor, op.kill_actor.no_restart,
                                     op.kill_actor.reason or "it was killed with starburst.kill()")
        self._dispatch()

    def welcome(self, session: Session) -> pb.Welcome:
        w = pb.Welcome(
            session_id=session.session_id, job_id=session.job_id, store_url=self.store.url,
            inline_threshold=config.INLINE_THRESHOLD, head_version=__version__,
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
        shape = self.node_shape
        if shape is not None:
            largest["CPU"] = max(largest.get("CPU", 0.0), shape.cpus)
            largest["GPU"] = max(largest.get("GPU", 0.0), shape.gpus)
            w.largest_node.memory = max(w.largest_node.memory, shape.memory)
        w.largest_node.cpus = largest.pop("CPU", 0.0)
        w.largest_node.gpus = largest.pop("GPU", 0.0)
        for k, v in largest.items():
            w.largest_node.custom[k] = v
        return w

    def _forget_function(self, session: Session, function_id: bytes) -> None:
        session.push(pb.HeadOp(forget_function=function_id))

    def _function_dropped(self, function_id: bytes) -> None:
        """No session holds it and no task uses it: nodes drop it (and tell their executors)."""
        self.durations.pop(function_id, None)
        self._run_times.pop(function_id, None)
        for node in self.nodes:
            if function_id in node.functions:
                node.functions.discard(function_id)
                node.push(pb.HeadToNodeOp(forget_function=function_id))
        self._trim = True

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
            session.push(_ready(object_id, obj.value))
        else:
            obj.subscribe(session)

    def _set_value(self, obj: Obj, value: pb.Value) -> None:
        obj.value = value
        for contained in value.contained:
            inner = self.objects.get(contained)
            if inner is not None:
                inner.refs += 1
                if obj.pinned is None:
                    obj.pinned = []
                obj.pinned.append(contained)
        if obj.subscribers:
            op = _ready(obj.id, value)
            for session in obj.subscribers:
                if not session.closed:
                    session.push(op)
            obj.subscribers = None
        if obj.dependents:
            dependents, obj.dependents = obj.dependents, None
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
        actor = self.actors.get(obj.id)
        if actor is not None:  # the last handle to an actor is gone
            del self.objects[obj.id]
            actor.out_of_scope = True
            self._maybe_terminate(actor)
            return
        if obj.value is None and (obj.dependents or obj.subscribers):
            return  # still awaited; freed when its value arrives
        del self.objects[obj.id]
        if obj.value is not None and obj.value.WhichOneof("where") == "key":
            self._delete_key(obj.value.key)
        for contained in obj.pinned or ():
            self._unref(contained)

    def _delete_key(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception:
            log.exception("could not delete object %s", key)

    # ------------------------------------------------------------------ tasks

    def _submit(self, session: Session, spec: pb.TaskSpec) -> None:
        if not spec.job_id:
            spec.job_id = session.job_id
        task = Task(spec, session)
        self.tasks[task.id] = task
        actor_id = spec.actor_id
        if not actor_id:
            task.uses = self._use_function(task)
        session.outstanding += 1
        actor: Actor | None = None
        if task.creation:
            actor = Actor(task)
            self.actors[actor_id] = actor
            actor.uses = self._use_function(task)  # restarts run its creation again
            if actor.name:
                self.names[(actor.namespace, actor.name)] = actor.id
            handle = self._obj(actor_id)  # handles count like refs to an object
            handle.refs += 2 if spec.actor.detached else 1  # a detached actor holds itself
            session.held.add(actor_id)
        else:
            if actor_id:
                actor = self.actors.get(actor_id)
            objects, held = self.objects, session.held
            for rid in spec.return_ids:
                obj = objects.get(rid)
                if obj is None:
                    obj = objects[rid] = Obj(rid)
                obj.refs += 1
                held.add(rid)
                obj.subscribe(session)
        parent_id = task.parent_id
        parent = self.tasks.get(parent_id) if parent_id else None
        if parent is not None:
            if parent.children is None:
                parent.children = set()
            parent.children.add(task.id)
        for object_id in task.inputs:
            pinned = self.objects.get(object_id)
            if pinned is not None:
                pinned.refs += 1
        if task.call:  # it waits in its actor's line
            if actor is None:
                self._fail(task, error_value(ActorDiedError(spec.actor_id.hex(), "the actor does not exist")))
                return
            if spec.direct:  # already sent to the actor's process by its caller
                self._direct_call(actor, task)
                return
            actor.calls.append(task)
        elif task.function_id not in self.functions:
            self._fail(task, error_value(RaySystemError(f"function of task {spec.name} was never sent")))
            return
        for object_id in set(task.deps) if task.deps else ():
            dep = self.objects.get(object_id)
            if dep is None:
                self._fail(task, error_value(ObjectLostError(object_id.hex())))
                return
            if dep.value is None:
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(task)
                task.waiting += 1
            elif dep.value.is_error:
                self._fail(task, dep.value)
                return
        if task.waiting == 0:
            self._enqueue(task)

    def _use_function(self, task: Task) -> bool:
        """Count ``task`` (or its actor) as a user of its function; False if the table doesn't have
        it. The task then holds the table's copy of the id (one object, however many tasks)."""
        shared = self.functions.use(task.function_id)
        if shared is None:
            return False
        task.function_id = shared
        return True

    def _enqueue(self, task: Task) -> None:
        """Ready to run. Tasks submitted by running tasks go first: their parents may be waiting for
        them, holding executors, so depth-first order is what keeps a pool of parents moving."""
        task.state = Task.QUEUED
        if task.call:
            actor = self.actors.get(task.spec.actor_id)
            if actor is not None:
                self._pump_actor(actor)
            return
        if task.parent_id:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)

    def _fail(self, task: Task, value: pb.Value, cancelled: bool = False) -> None:
        """Finish ``task`` with ``value`` (an error) as every one of its results."""
        if task.state == Task.DONE:
            return
        error = None if cancelled or not value.is_error else value
        self._finish(task, [pb.Object(id=rid, value=value) for rid in task.spec.return_ids], error, cancelled)

    def _finish(self, task: Task, results: Sequence[pb.Object], error: pb.Value | None,
                cancelled: bool = False) -> None:
        """``error``: the first error among ``results`` (``_first_error``), None if cancelled."""
        if cancelled:
            self.tasks_cancelled += 1
        elif error is not None:
            self.tasks_failed += 1
        if task.state == Task.QUEUED:
            try:
                self.queue.remove(task)
            except ValueError:
                pass
        if task.call:
            actor = self.actors.get(task.spec.actor_id)
            if actor is not None:
                actor.inflight.pop(task.id, None)
                if task.state != Task.RUNNING:
                    try:
                        actor.calls.remove(task)
                    except ValueError:
                        pass
        if self.observer is not None:
            self.observer.on_finish(task, error, cancelled)
        task.state = Task.DONE
        if self.cancelling:
            self.cancelling.discard(task.id)
        if self._awaiting_word:
            self._awaiting_word.pop(task.id, None)
        if self._unanswered:
            self._unanswered.discard(task.id)
        task.owner.outstanding -= 1
        self.tasks.pop(task.id, None)
        self.tasks_finished += 1
        if task.uses:
            task.uses = False
            self.functions.unuse(task.function_id)
        for result in results:
            obj = self.objects.get(result.id)
            if obj is None or obj.value is not None:
                # Nobody holds this result any more: drop its stored value right away.
                if result.value.WhichOneof("where") == "key" and obj is None:
                    self._delete_key(result.value.key)
                continue
            self._set_value(obj, result.value)
        spec = task.spec
        actor = self.actors.get(spec.actor_id) if task.creation else None
        if actor is None or actor.state == Actor.DEAD:  # a live actor may need its arguments again
            self._release_inputs(task)
        parent = self.tasks.get(task.parent_id) if task.parent_id else None
        if parent is not None and parent.children:
            parent.children.discard(task.id)

    def _release_inputs(self, task: Task) -> None:
        for object_id in task.inputs:
            self._unref(object_id)
        if task.args_key:
            self._delete_key(task.args_key)

    def _cancel_task(self, task: Task, force: bool, recursive: bool) -> None:
        if recursive:
            for child_id in list(task.children or ()):
                child = self.tasks.get(child_id)
                if child is not None:
                    self._cancel_task(child, force, recursive)
        if task.spec.actor_id:
            force = False  # killing the process would kill the actor, not just this call
        if task.state in (Task.WAITING, Task.QUEUED):
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())), cancelled=True)
        elif task.state == Task.RUNNING and task.node is not None:
            if not task.spec.actor_id:
                self.cancelling.add(task.spec.task_id)
            task.node.push(pb.HeadToNodeOp(cancel=pb.Cancel(task_id=task.id, force=force,
                                                            actor_id=task.spec.actor_id if task.call else b"")))

    def _retries_left(self, task: Task) -> bool:
        return task.spec.max_retries < 0 or task.spec.attempt < task.spec.max_retries

    def _requeue(self, task: Task, charge: bool = True) -> None:
        """Back to the front of the queue; ``charge``: counts as a retry (it ran, or may have). A
        task whose cancel was asked while it was at a node ends cancelled instead."""
        if task.spec.task_id in self.cancelling:
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())), cancelled=True)
            return
        if charge:
            task.spec.attempt += 1
        task.spec.stream_skip = task.streamed
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
        for actor in [a for a in self.actors.values() if a.node is node and a.state != Actor.DEAD]:
            self._actor_died(actor, f"its node was lost ({reason})")
        node.actor_inflight.clear()
        self._dispatch()

    def _task_lost(self, task: Task, why: str) -> None:
        if task.state != Task.RUNNING:
            return
        if self._retries_left(task):
            self._requeue(task)
        else:
            self._fail(task, error_value(WorkerCrashedError(f"{task.spec.name} has no retries left: {why}")))

    def on_node_ops(self, node: Node, ops: Iterable[pb.NodeToHeadOp], relay: Callable) -> None:
        for op in ops:
            kind = op.WhichOneof("op")
            if kind == "done":
                done = op.done
                if done.HasField("store_usage"):
                    _add_usage(self.store_usage_nodes, done.store_usage)
                self._task_done(node, done)
            elif kind == "log":
                self._route_log(op.log)
            elif kind == "relay":
                relay(node, op.relay)
            elif kind == "blocked":
                delta = op.blocked.cpus if op.blocked.blocked else -op.blocked.cpus
                node.blocked_cpus = max(0.0, node.blocked_cpus + delta)
            elif kind == "executors":
                node.executors = op.executors
            elif kind == "running":
                node.running = op.running
            elif kind == "draining":
                node.draining = op.draining
            elif kind == "stream_item":
                self._stream_item(op.stream_item)
            elif kind == "actor_died":
                actor = self.actors.get(op.actor_died.actor_id)
                if actor is not None and actor.node is node:
                    self._actor_died(actor, op.actor_died.reason)
        self._dispatch()

    def _stream_item(self, item: pb.Object) -> None:
        """A value yielded by a streaming task: the submitter holds it and gets it at once."""
        task = self.tasks.get(_ids.task_of(item.id))
        if task is None or task.state != Task.RUNNING or task.owner.closed or item.id in self.objects:
            if item.value.WhichOneof("where") == "key":
                self._delete_key(item.value.key)
            return
        index = _ids.item_index(item.id)
        if index < task.streamed:  # a retry yields again what an earlier attempt already delivered
            if item.value.WhichOneof("where") == "key":
                self._delete_key(item.value.key)
            return
        task.streamed = index + 1
        obj = self._obj(item.id)
        obj.refs += 1
        task.owner.held.add(item.id)
        obj.subscribe(task.owner)
        self._set_value(obj, item.value)

    def _route_log(self, entry: pb.Log) -> None:
        if self.observer is not None:
            self.observer.on_log(entry)
        session = self.sessions.get(entry.job_id)
        if session is not None and session.log_to_driver:
            session.push(pb.HeadOp(log=entry))

    def _task_done(self, node: Node, done: pb.TaskDone) -> None:
        task_id, failure = done.task_id, done.failure
        if node.recalling:
            node.recalling.discard(task_id)
        started = failure != pb.TaskDone.NOT_STARTED
        if started:
            node.last_progress = self.clock()
        task = node.inflight.pop(task_id, None)
        call = None if task is not None else node.actor_inflight.pop(task_id, None)
        ran = task if task is not None else call
        results = done.results
        error = _first_error(results) if started else None
        if self.observer is not None and started and ran is not None:  # a run that happened (handed back: none)
            self.observer.on_done(node, ran, done, failure != pb.TaskDone.NONE or error is not None)
        if task is None:
            if call is not None:
                self._call_done(call, done, error)
            elif started and task_id not in self.tasks:
                if len(self._early_dones) < EARLY_DONES_MAX:
                    # Refs inside its results are held until it is applied: what the task put may
                    # otherwise be released (by the task's process) before anything pins it.
                    pins = [c for r in done.results for c in r.value.contained if c in self.objects]
                    for object_id in pins:
                        self.objects[object_id].refs += 1
                    self._early_dones[task_id] = _EarlyDone(node, done, self.clock(), pins)
            return
        if task.creation:  # its resources stay held while the actor lives
            if task.state == Task.RUNNING:
                self._creation_done(task, done, error)
            return
        used = node.used
        for name, qty in task.want.items():
            used[name] -= qty
        if task.state != Task.RUNNING:
            return
        if failure == pb.TaskDone.NONE:
            # The median: one call far longer than the rest (a straggler) doesn't make a short
            # function look long (that would cut its prefetch for the calls that follow).
            function_id = task.function_id
            recent = self._run_times.get(function_id)
            if recent is None:
                recent = self._run_times[function_id] = collections.deque(maxlen=RECENT_RUNS)
            recent.append(done.duration_s)
            self.durations[function_id] = sorted(recent)[len(recent) // 2]
            self.ran_on[node.node_id] += 1
            if not done.retryable:
                self._finish(task, results, error)
                return
        if failure == pb.TaskDone.NOT_STARTED:
            task.avoid = node
            node.returned_at = self.clock()
            self._requeue(task, charge=False)
        elif failure == pb.TaskDone.WORKER_DIED:
            self._task_lost(task, done.detail or "its worker process died")
        elif failure == pb.TaskDone.CANCELLED:
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())), cancelled=True)
        elif done.retryable and self._retries_left(task):
            self._requeue(task)
        else:
            self._finish(task, results, error)

    def _pick_node(self, task: Task) -> Node | None:
        """The least-loaded node it fits on; a node that seems stuck (see ``_stalled``), or that the
        task was just recalled from, only if no other fits. A node that handed work back unstarted
        gets none until it has finished a task since (work sent there would wait for that, or bounce),
        unless it is the only node or has nothing left to be stuck behind (it handed back all it had:
        a stall of its own, not a long task; without work it would never finish one)."""
        best: Node | None = None
        best_key = None
        duration = self.durations.get(task.function_id)
        others = len(self.nodes) > 1
        for node in self.nodes:
            if others and node.returned_at >= node.last_progress and node.inflight:
                continue
            if not node.fits(task.want, node.depth(duration), actor=task.creation):
                continue
            if best is None:  # ranked only when there is a choice
                best = node
                continue
            if best_key is None:
                best_key = (best is task.avoid or self._stalled(best, duration), best.load())
            key = (node is task.avoid or self._stalled(node, duration), node.load())
            if key < best_key:
                best, best_key = node, key
        task.avoid = None
        return best

    def _stalled(self, node: Node, run_time: float | None) -> bool:
        """Holding tasks it has not started and no task done for a while (4x their run time plus
        a round trip, at least STALL_MIN_S): stuck behind something long."""
        return (run_time is not None and self.clock() - node.last_progress > max(STALL_MIN_S, 4 * run_time + node.rtt)
                and node.surplus() > 0)

    def settle(self) -> int:
        """Call about once a second. After a burst of tasks has drained, the heap it used goes back
        to the OS (glibc keeps freed memory for reuse otherwise: after 10 bursts of 10,000 tasks the
        head kept 5 MiB more). Returns the peak it trimmed after (0: no trim)."""
        if self._early_dones:  # ends whose call never came (its caller went away first)
            stale = self.clock() - EARLY_DONE_S
            for task_id in [t for t, early in self._early_dones.items() if early.at < stale]:
                self._unpin(self._early_dones.pop(task_id))
        held = len(self.tasks)
        self._peak_tasks = max(self._peak_tasks, held)
        peak = self._peak_tasks
        if peak < TRIM_AFTER_TASKS or held * 10 > peak:
            return 0
        self._peak_tasks = held
        trim_memory()
        return peak

    def _dispatch(self) -> None:
        if self._trim:  # a dropped function's memory goes back to the OS
            self._trim = False
            trim_memory()
        if self.nodes:
            self._place_queued()
            self._recall_queued()

    def _place_queued(self) -> None:
        if not self.queue:
            return
        # A task that fits nowhere now (e.g. an actor waiting for CPUs another actor holds) doesn't
        # hold up those behind it, but we look only so far ahead: this runs after every batch.
        skipped: list[Task] = []
        # The nodes with room for the shortest tasks (the most any task may be sent); placing a task
        # changes only its node's room.
        room = {n: depth for n, depth in ((n, n.max_depth()) for n in self.nodes) if n.has_room(depth)}
        # Tasks alike (the same shared want dict, function and kind) that fit no node: placing
        # others only takes room, so none of them fits in this pass either.
        stuck: set[tuple[int, bytes, bool]] = set()
        while room and self.queue and len(skipped) < LOOK_PAST:
            task = self.queue.popleft()
            shape = (id(task.want), task.function_id, task.creation)
            node = None if shape in stuck else self._pick_node(task)
            if node is None:
                stuck.add(shape)
                skipped.append(task)
                continue
            self._run_on(task, node)
            depth = room.get(node)
            if depth is not None and not node.has_room(depth):
                del room[node]
        self.queue.extendleft(reversed(skipped))

    def _recall_queued(self) -> None:
        """No hidden queue while capacity is idle: when nothing waits here and a node has idle CPUs
        while another holds tasks it has not started, ask half of those back (all of them if that
        node has made no progress for a while: it is stuck behind a long task). The node hands back
        what has not started (NOT_STARTED: placed again, no retry charged); what started runs on."""
        if self.queue or len(self.nodes) < 2:
            return
        idle = sum(max(0.0, n.idle_cpus()) for n in self.nodes if not n.draining and n.alive)
        if idle < 1 - 1e-9:
            return
        for victim in sorted(self.nodes, key=lambda n: n.surplus(), reverse=True):
            if idle < 1 - 1e-9:
                break
            excess = victim.surplus()
            if victim.recalling or excess <= 0 or victim.idle_cpus() >= 1 - 1e-9:
                continue
            # The latest sent are the furthest back in the node's queues.
            candidates = [t for t in reversed(victim.inflight.values()) if not t.creation]
            if not candidates:
                continue
            stalled = self._stalled(victim, self.durations.get(candidates[0].function_id))
            count = excess if stalled else (excess + 1) // 2
            ids = [t.id for t in candidates[:count]]
            if not ids:
                continue
            log.debug("recalling %d of the %d unstarted tasks on node %s%s", len(ids), excess, victim.node_id,
                      " (stalled)" if stalled else "")
            victim.recalling.update(ids)
            victim.push(pb.HeadToNodeOp(recall=pb.Returned(task_ids=ids)))
            idle -= len(ids)

    def _run_on(self, task: Task, node: Node) -> None:
        spec = task.spec
        op = pb.HeadToNodeOp()
        run = op.run  # built in place: one copy of the spec, not two
        run.spec.CopyFrom(spec)
        for object_id in task.deps:
            obj = self.objects[object_id]
            run.deps.add(id=object_id, value=obj.value)
        if task.function_id not in node.functions:
            node.functions.add(task.function_id)
            run.function.CopyFrom(self.functions.get(task.function_id))
        task.state = Task.RUNNING
        task.node = node
        if not node.inflight:
            node.last_progress = self.clock()
        node.inflight[task.id] = task
        node.push(op)
        if task.creation:
            actor = self.actors[spec.actor_id]
            actor.node = node
            self._release_actor(actor)
            actor.holding = node  # from its creation until its process is gone
            for name, qty in task.want.items():
                node.held[name] += qty
            if actor.state != Actor.DEAD:
                actor.state = Actor.PLACED
        else:
            for name, qty in task.want.items():
                node.used[name] += qty

    def _release_actor(self, actor: "Actor") -> None:
        """The actor's process is gone (or will never start): what it held is free again."""
        node, actor.holding = actor.holding, None
        if node is not None:
            for name, qty in actor.creation.want.items():
                node.held[name] -= qty

    # ------------------------------------------------------------------ actors

    def _pump_actor(self, actor: Actor) -> None:
        """Send the actor's calls that are ready, in submission order (a call whose arguments are
        not ready holds back the ones behind it, as in Ray)."""
        if actor.state == Actor.DEAD:
            while actor.calls:
                self._fail(actor.calls[0], actor.death or error_value(ActorDiedError(actor.id.hex())))
            return
        if actor.state != Actor.ALIVE or actor.node is None:  # calls wait for the constructor
            return
        while actor.calls:
            task = actor.calls[0]
            if task.state == Task.DONE:
                actor.calls.popleft()
                continue
            if task.state != Task.QUEUED:
                return
            actor.calls.popleft()
            spec = task.spec
            run = pb.Run(spec=spec)
            for object_id in task.deps:
                run.deps.add(id=object_id, value=self.objects[object_id].value)
            task.state = Task.RUNNING
            task.node = actor.node
            actor.inflight[task.id] = task
            actor.node.actor_inflight[task.id] = task
            actor.node.push(pb.HeadToNodeOp(run=run))

    def _creation_done(self, task: Task, done: pb.TaskDone, error: pb.Value | None) -> None:
        """``error``: the first error among ``done.results``."""
        actor = self.actors[task.spec.actor_id]
        if done.failure == pb.TaskDone.WORKER_DIED:
            task.state = Task.QUEUED  # the ActorDied report that follows decides: restart or not
            return
        if done.failure == pb.TaskDone.CANCELLED:
            error = error_value(ActorDiedError(actor.id.hex(), "its creation was cancelled"))
        self._finish(task, [], None)
        if error is None:
            if actor.state != Actor.DEAD:
                actor.state = Actor.ALIVE
                self._announce_direct(actor, task, done)
                self._pump_actor(actor)
            return
        cause = self._load_error(error)
        self._actor_dead(actor, error_value(ActorDiedError(
            actor.id.hex(), f"the actor died because of an error raised in its creation task: {cause}",
            cause=cause)))
        self._kill_process(actor)

    # ------------------------------------------------------------------ calls straight to actors

    def _announce_direct(self, actor: Actor, creation: Task, done: pb.TaskDone) -> None:
        """Tell the actor's creator (a driver) that it may send calls straight to the actor's process,
        if that process listens and runs on this machine's node."""
        owner, node = creation.owner, actor.node
        if (not done.direct_address or owner.closed or owner.kind != "driver" or node is None
                or not node.hello.address.startswith("unix:")):
            return
        opts = actor.options
        owner.push(pb.HeadOp(actor_direct=pb.ActorDirect(
            actor_id=actor.id, address=done.direct_address, token=done.direct_token,
            incarnation=creation.spec.attempt + 1, ordered=not opts.is_async and opts.max_concurrency <= 1)))

    def _direct_call(self, actor: Actor, task: Task) -> None:
        """A call its caller sent straight to the actor's process (incarnation ``spec.direct``): it
        is in flight there, as if the head had sent it. One sent to a process that has gone since
        waits for its caller's word: answered (kept), or not (lost as a call in flight is when its
        process dies: retried or failed)."""
        current = task.spec.direct == actor.creation.spec.attempt + 1
        early = self._early_dones.pop(task.id, None)
        if actor.state == Actor.ALIVE and actor.node is not None and current:
            task.state = Task.RUNNING
            task.node = actor.node
            actor.inflight[task.id] = task
            actor.node.actor_inflight[task.id] = task
            if early is not None and early.node is actor.node:
                self._task_done(early.node, early.done)
            self._unpin(early)
            return
        if early is not None:  # its end came through the node before its process died: kept
            task.state = Task.RUNNING
            if early.done.failure == pb.TaskDone.NONE:
                self._finish(task, early.done.results, _first_error(early.done.results))
            else:
                self._fail(task, error_value(TaskCancelledError(task.id.hex())), cancelled=True)
            self._unpin(early)
            return
        self._await_word(task)

    def _await_word(self, task: Task) -> None:
        task.state = Task.WAITING  # (neither queued nor placed: nothing runs it until the word)
        task.node = None
        self._awaiting_word[task.id] = task

    def _direct_lost(self, actor: Actor, task: Task) -> None:
        """Its caller says a direct call was not answered before its process died."""
        task.state = Task.QUEUED
        if actor.state == Actor.DEAD:
            self._fail(task, actor.death or error_value(ActorDiedError(actor.id.hex())))
        else:  # (at the end of the line: the caller's later calls come through the head, after it)
            self._call_lost(actor, task, "it was sent straight to it", first=False)
            self._pump_actor(actor)
        self._maybe_terminate(actor)

    def _call_lost(self, actor: Actor, task: Task, reason: str, first: bool) -> None:
        """A call whose process died while it ran, on an actor that is coming back: back in the
        actor's line (``first``: at its front) while ``max_task_retries`` allows, else failed."""
        retries = actor.options.max_task_retries
        if retries < 0 or task.spec.attempt < retries:
            task.spec.attempt += 1
            task.spec.stream_skip = task.streamed
            task.spec.direct = 0  # (a retry goes through the head)
            task.state = Task.QUEUED
            if first:
                actor.calls.appendleft(task)
            else:
                actor.calls.append(task)
        else:
            self._fail(task, error_value(ActorUnavailableError(  # Ray's type: the actor comes back
                actor.id.hex(), f"the actor's process died while running this call ({reason}) and "
                                "the actor is restarting; set max_task_retries to retry calls on "
                                "the restarted actor")))

    def _direct_done(self, session: Session, done: pb.TaskDone) -> None:
        """The caller of a direct call reports its end (it has the values already), or that the
        connection to the actor's process broke before an answer (WORKER_DIED)."""
        task = self.tasks.get(done.task_id)
        if task is None or task.owner is not session or not task.spec.direct or done.attempt != task.spec.attempt:
            return  # ended meanwhile
        actor = self.actors.get(task.spec.actor_id)
        awaited = self._awaiting_word.pop(task.id, None)
        if done.failure == pb.TaskDone.WORKER_DIED:
            if awaited is not None and actor is not None:
                self._direct_lost(actor, task)
            elif awaited is not None:
                self._fail(task, error_value(ActorDiedError(task.spec.actor_id.hex())))
            elif task.state == Task.RUNNING:
                # The caller saw the connection break before the head saw the process die (or the
                # process lives on, and it reports the call through the node): kept for either.
                self._unanswered.add(task.id)
            return
        if awaited is None and task.state != Task.RUNNING:
            return
        for rid in task.spec.return_ids:  # the session has them: no ready for it
            obj = self.objects.get(rid)
            if obj is not None and obj.subscribers and session in obj.subscribers:
                obj.subscribers.remove(session)
        error = _first_error(done.results)
        if awaited is not None:  # answered before its process died
            task.state = Task.RUNNING
            self._finish(task, done.results, error)
            if actor is not None:
                self._maybe_terminate(actor)
            return
        node = task.node
        if node is not None:
            node.actor_inflight.pop(task.id, None)
            if self.observer is not None:
                self.observer.on_done(node, task, done, done.failure != pb.TaskDone.NONE or error is not None)
        self._call_done(task, done, error)

    def _unpin(self, early: "_EarlyDone | None") -> None:
        if early is not None:
            for object_id in early.pins:
                self._unref(object_id)

    def _direct_detach(self, task: Task) -> None:
        self._awaiting_word.pop(task.id, None)
        actor = self.actors.get(task.spec.actor_id)
        if actor is not None:
            actor.inflight.pop(task.id, None)
        if task.node is not None:
            task.node.actor_inflight.pop(task.id, None)

    def _call_done(self, task: Task, done: pb.TaskDone, error: pb.Value | None) -> None:
        """``error``: the first error among ``done.results``."""
        actor = self.actors.get(task.spec.actor_id)
        if actor is None or task.state != Task.RUNNING:
            return
        actor.inflight.pop(task.spec.task_id, None)
        if done.failure == pb.TaskDone.WORKER_DIED:
            actor.lost.append(task)  # decided when the actor's death is reported
            return
        if done.failure == pb.TaskDone.CANCELLED:
            self._fail(task, error_value(TaskCancelledError(task.spec.task_id.hex())), cancelled=True)
        else:
            self._finish(task, done.results, error)
        self._maybe_terminate(actor)

    def _actor_died(self, actor: Actor, reason: str) -> None:
        """The actor's process is gone: restart it (retrying its calls) or declare it dead."""
        self._release_actor(actor)
        lost = sorted(actor.lost + list(actor.inflight.values()), key=lambda t: t.submitted)
        actor.lost = []
        for task in actor.inflight.values():
            if actor.node is not None:
                actor.node.actor_inflight.pop(task.spec.task_id, None)
        actor.inflight.clear()
        # A call sent straight to the process may have been answered already (its caller has the
        # value; its word of it is on the way): the caller says which, then it is kept or lost.
        for task in [t for t in lost if t.spec.direct and t.id not in self._unanswered]:
            self._await_word(task)
        lost = [t for t in lost if not t.spec.direct or t.id in self._unanswered]
        for task in lost:
            self._unanswered.discard(task.id)
        opts = actor.options
        can_restart = (
            not actor.no_restart and not actor.terminating and actor.state != Actor.DEAD
            and (opts.max_restarts < 0 or actor.restarts < opts.max_restarts)
        )
        if not can_restart:
            message = actor.kill_reason or reason if actor.no_restart or actor.terminating else (
                f"its process died ({reason}) and it has no restarts left")
            death = error_value(ActorDiedError(actor.id.hex(), f"The actor is dead because {message}."))
            for task in lost:
                self._fail(task, death)
            self._actor_dead(actor, death)
            return
        actor.restarts += 1
        actor.state = Actor.RESTARTING
        actor.node = None
        for task in reversed(lost):
            self._call_lost(actor, task, reason, first=True)
        creation = actor.creation
        creation.spec.attempt += 1
        if creation.state == Task.DONE:  # it had finished: run it again, as a fresh task
            self.tasks[creation.spec.task_id] = creation
            creation.owner.outstanding += 1
        creation.state = Task.QUEUED
        creation.node = None
        self.queue.appendleft(creation)

    def _actor_dead(self, actor: Actor, death: pb.Value) -> None:
        if actor.state == Actor.DEAD:
            return
        actor.state = Actor.DEAD
        actor.death = death
        if actor.uses:
            actor.uses = False
            self.functions.unuse(actor.creation.function_id)
        self._release_actor(actor)
        if actor.name and self.names.get((actor.namespace, actor.name)) == actor.id:
            del self.names[(actor.namespace, actor.name)]
        if actor.creation.state != Task.DONE:
            self._finish(actor.creation, [], None)  # releases its inputs too (the actor is dead)
        else:
            self._release_inputs(actor.creation)
        self._pump_actor(actor)

    def _kill_actor(self, actor: Actor, no_restart: bool, reason: str) -> None:
        actor.no_restart = actor.no_restart or no_restart
        if actor.state == Actor.DEAD:
            return
        if actor.state in (Actor.PLACED, Actor.ALIVE) and actor.node is not None:
            self._kill_process(actor)
        elif no_restart:  # not started yet: it never will be
            self._actor_dead(actor, error_value(ActorDiedError(actor.id.hex(), f"The actor is dead because {reason}.")))

    def _kill_process(self, actor: Actor) -> None:
        if actor.node is not None and actor.node.alive:
            actor.node.push(pb.HeadToNodeOp(kill_actor=actor.id))

    def _maybe_terminate(self, actor: Actor) -> None:
        """An actor nobody holds a handle to ends once the calls already made have finished."""
        if not actor.out_of_scope or actor.options.detached or actor.state == Actor.DEAD:
            return
        if actor.calls or actor.inflight or actor.lost:
            return
        if self._awaiting_word and any(t.spec.actor_id == actor.id for t in self._awaiting_word.values()):
            return  # a direct call whose process died: its caller's word may retry it
        actor.terminating = True
        self._kill_process(actor)
        self._actor_dead(actor, error_value(ActorDiedError(
            actor.id.hex(), "The actor is dead because all references to it were deleted.")))
        del self.actors[actor.id]

    @staticmethod
    def _load_error(value: pb.Value) -> BaseException | str:
        from ..serialization import deserialize

        try:
            error = deserialize(value.inline)
        except Exception as exc:  # noqa: BLE001 - e.g. a user exception class the head can't import
            return f"(an error the head could not load: {exc})"
        return getattr(error, "cause", None) or error

    def _request(self, session: Session, request: pb.ActorRequest) -> pb.ActorReply:
        reply = pb.ActorReply(request_id=request.request_id)
        kind = request.WhichOneof("op")
        if kind == "create_named":
            spec = request.create_named
            key = (spec.namespace, spec.actor.name)
            existing = self.actors.get(self.names.get(key, b""))
            if existing is not None and existing.state != Actor.DEAD:
                if not spec.actor.get_if_exists:
                    reply.error = (f"The name {spec.actor.name} (namespace={spec.namespace}) is already "
                                   "taken. Use get_if_exists=True to get the existing actor, or "
                                   "another name.")
                    return reply
                self._hold_actor(session, existing)
                reply.actor_id, reply.handle_meta = existing.id, existing.options.handle_meta
                return reply
            self._submit(session, spec)
            reply.actor_id, reply.handle_meta, reply.created = spec.actor_id, spec.actor.handle_meta, True
        elif kind == "get_named":
            namespace, _, name = request.get_named.partition("/")
            actor = self.actors.get(self.names.get((namespace, name), b""))
            if actor is None or actor.state == Actor.DEAD:
                reply.error = (f"Failed to look up actor with name '{name}'. This could because 1. You "
                               "are trying to look up a named actor you didn't create. 2. The named "
                               "actor died. 3. You did not use a namespace matching the namespace of "
                               f"the actor (looked in namespace '{namespace}').")
                return reply
            self._hold_actor(session, actor)
            reply.actor_id, reply.handle_meta = actor.id, actor.options.handle_meta
        elif kind == "outstanding":
            reply.outstanding = max(0, session.outstanding)
        elif kind == "cluster_state":
            for node in self.nodes:
                r = node.hello.resources
                reply.total.cpus += r.cpus
                reply.total.memory += r.memory
                in_use = node.cpus_in_use()
                reply.available.cpus += max(0.0, r.cpus - in_use)
                reply.available.memory += max(0.0, r.memory - node.used["memory"] - node.held["memory"])
                reply.nodes.add(node_id=node.node_id, address=node.hello.address, resources=r,
                                cpus_in_use=in_use, running=node.started(), queued=node.unstarted(),
                                pid=node.hello.pid, executors=node.executors)
        return reply

    def _hold_actor(self, session: Session, actor: Actor) -> None:
        """The session gets a handle: count it (the client does not send add_ref for these)."""
        obj = self._obj(actor.id)
        if actor.id not in session.held:
            session.held.add(actor.id)
            obj.refs += 1
        actor.out_of_scope = False

    # ------------------------------------------------------------------ node providers
    # What a provider (local, Fargate) may ask and tell the scheduler; nothing else of it is theirs.

    def demand(self) -> float:
        """Runnable work, in tasks: those waiting for a node plus one per busy CPU (tasks queued
        ahead at a node and tasks waiting for their arguments don't need more nodes)."""
        return len(self.queue) + sum(min(len(n.inflight), n.total["CPU"]) for n in self.nodes)

    def backlog(self) -> tuple[list[float | None], list[float | None]]:
        """Runnable tasks as their functions' recent run times (None: not known yet), in two lists:
        those not started (at the head or queued at a node), and those running."""
        queued = [self.durations.get(t.function_id) for t in self.queue]
        running: list[float | None] = []
        for node in self.nodes:
            started = node.started()
            for i, task in enumerate(node.inflight.values()):
                (running if i < started else queued).append(self.durations.get(task.function_id))
        return queued, running

    def has_waiting(self) -> bool:
        """Whether any ready task waits for a node (then no node is idle: it may get work)."""
        return bool(self.queue)

    def node_busy(self, node: Node) -> bool:
        """Whether the node runs or holds anything (a task, an actor call, a live actor)."""
        if node.inflight or node.actor_inflight:
            return True
        return any((a.node is node or a.holding is node) and a.state != Actor.DEAD for a in self.actors.values())

    def drain(self, node: Node) -> None:
        """Place nothing more on ``node`` (it is about to be stopped; what it holds comes back when
        its stream ends, or as NOT_STARTED if it drains itself)."""
        node.draining = True

    # ------------------------------------------------------------------ checks

    def check_invariants(self) -> None:
        """Raise AssertionError if the books disagree (unit tests run this after every step): every
        task is in exactly one place, resources add up and are never negative or over capacity."""
        placed: dict[bytes, Node] = {}
        for node in self.nodes:
            for task_id in list(node.inflight) + list(node.actor_inflight):
                assert task_id not in placed, f"task {task_id.hex()} sent to two nodes"
                placed[task_id] = node
            assert node.recalling <= set(node.inflight), "recalling a task the node does not hold"
            used: dict[str, float] = collections.defaultdict(float)
            for task in node.inflight.values():
                if not task.creation:
                    for name, qty in task.want.items():
                        used[name] += qty
            held: dict[str, float] = collections.defaultdict(float)
            for actor in self.actors.values():
                if actor.holding is node:
                    for name, qty in actor.creation.want.items():
                        held[name] += qty
            for name in set(used) | set(node.used) | set(held) | set(node.held):
                assert abs(used[name] - node.used[name]) < 1e-6, f"{name} used {node.used[name]}, tasks {used[name]}"
                assert abs(held[name] - node.held[name]) < 1e-6, f"{name} held {node.held[name]}, actors {held[name]}"
                assert node.held[name] <= node.total.get(name, 0.0) + 1e-6, f"{name} held over capacity"
                assert node.used[name] >= -1e-6 and node.held[name] >= -1e-6, f"{name} negative"
        queued = collections.Counter(t.spec.task_id for t in self.queue)
        assert all(n == 1 for n in queued.values()), "a task queued twice"
        for task_id, task in self.tasks.items():
            where = (task_id in queued) + (task_id in placed)
            if task.state == Task.RUNNING:
                assert where == 1 and placed.get(task_id) is task.node, f"running task {task_id.hex()}"
            elif task.state == Task.QUEUED:
                in_line = any(task in a.calls for a in self.actors.values())
                assert (task_id in queued) + in_line == 1 and task_id not in placed, f"queued task {task_id.hex()}"
            else:
                assert where == 0, f"task {task_id.hex()} in state {task.state} is queued or placed"
        for task_id in placed:
            assert task_id in self.tasks, f"node holds unknown task {task_id.hex()}"
        assert self.cancelling <= set(self.tasks), "a cancel pending for a task that ended"
        for obj in self.objects.values():
            assert obj.refs >= 0, f"object {obj.id.hex()} has {obj.refs} refs"
        users: collections.Counter[bytes] = collections.Counter(
            t.function_id for t in self.tasks.values() if t.uses)
        users.update(a.creation.function_id for a in self.actors.values() if a.uses)
        for function_id, entry in self.functions.entries.items():
            assert entry.users == users[function_id], f"function {function_id.hex()} has {entry.users} users"
            assert entry.holders or entry.users, f"function {function_id.hex()} kept for nobody"

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        """Counts for ``starburst status``: "running" are tasks a node has started; "queued" are
        ready tasks not started yet, at the head or at a node (``waiting``: for their arguments)."""
        return {
            "queued": len(self.queue) + sum(n.unstarted() for n in self.nodes),
            "waiting": sum(1 for t in self.tasks.values() if t.state == Task.WAITING),
            "running": sum(n.started() for n in self.nodes),
            "finished": self.tasks_finished - self.tasks_failed - self.tasks_cancelled,
            "failed": self.tasks_failed,
            "cancelled": self.tasks_cancelled,
            "objects": len(self.objects),
            "object_bytes": sum(o.value.size for o in self.objects.values() if o.value is not None),
        }

    def abort(self, reason: str) -> None:
        """The cluster stops: every unfinished task fails with ``ClusterStoppedError(reason)``,
        and every session is told ``reason`` (its driver's later calls raise it)."""
        error = error_value(ClusterStoppedError(reason))
        for task in list(self.tasks.values()):
            self._fail(task, error)
        for session in list(self.sessions.values()):
            session.push(pb.HeadOp(error=reason))

    def drop_all_objects(self) -> None:
        """At shutdown: delete every stored value."""
        for obj in list(self.objects.values()):
            if obj.value is not None and obj.value.WhichOneof("where") == "key":
                self._delete_key(obj.value.key)
        self.objects.clear()


def _add_usage(total: pb.StoreUsage, usage: pb.StoreUsage) -> None:
    total.put_requests += usage.put_requests
    total.get_requests += usage.get_requests
    total.delete_requests += usage.delete_requests
    total.bytes_uploaded += usage.bytes_uploaded
    total.bytes_downloaded += usage.bytes_downloaded


def _first_error(results: Iterable[pb.Object]) -> pb.Value | None:
    """The first error value among ``results`` (a loop, not a generator: this runs per task)."""
    for result in results:
        value = result.value
        if value.is_error:
            return value
    return None


def _ready(object_id: bytes, value: pb.Value) -> pb.HeadOp:
    """The op telling a session ``object_id`` has ``value`` (built in place: ``HeadOp(ready=Object(
    value=...))`` copies the value twice)."""
    op = pb.HeadOp()
    ready = op.ready
    ready.id = object_id
    ready.value.CopyFrom(value)
    return op
