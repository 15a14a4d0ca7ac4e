"""A session with the head, used by drivers and (relayed through their node) by executors.

The Client keeps the process's view of objects: how many ObjectRefs it holds per id, the values that
have arrived, and who waits for them. It speaks ClientMsg/HeadMsg batches over a transport:
:class:`GrpcTransport` (drivers: one bidirectional gRPC stream to the head) or the executor's relay
to its node (see ``node/executor.py``). The transport pulls queued operations with
:meth:`Client.take_outbox` whenever :meth:`Client._wake` tells it there is something to send, so
many operations leave in one message.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Protocol

from .. import _ids, config
from .._version import __version__
from .._proto import starburst_pb2 as pb
from ..exceptions import GetTimeoutError, RaySystemError, RayTaskError, SessionLostError
from ..experimental import tqdm_ray as _tqdm_ray
from ..framing import FramedStream
from ..object_ref import ObjectRef
from ..serialization import Serialized, deserialize, serialize
from ..store import ObjectStore, load_value, open_store, pack_value, store_usage
from .direct import DirectChannel


class Transport(Protocol):
    def start(self, client: "Client") -> None: ...
    def wake(self) -> None:
        """There is something to send now: call :meth:`Client.take_outbox` soon. Called from any
        thread, the garbage collector's finalizers included, maybe holding the client's lock."""
    def send_now(self) -> None:
        """Like :meth:`wake`, from a caller that holds no lock of the client's: the transport may
        take the outbox and write it on the caller's thread."""
    def wake_soon(self) -> None:
        """There is something that may wait a little (released refs, the books of direct actor
        calls): with the next batch, or within :data:`RELEASE_DELAY_S`."""
    def close(self) -> None: ...


#: A released ref is told to the head with the next batch, or after at most this long.
RELEASE_DELAY_S = 0.02
#: The flush timer keeps running this long after the last batch: a program that calls get() in a
#: loop releases each result between calls, and those releases wait for its next call (or the
#: timer) instead of waking the session thread, which would then compete with the next call.
RELEASE_ACTIVE_S = 1.0
#: A call made at least this long after the last write to a local head leaves from the caller's own
#: thread, if the session thread is idle: from `.remote()` to the call on the wire took 0.29 ms
#: through that thread, 0.13-0.19 ms without it (a traced sync round trip). Calls closer together
#: wait for the session thread, which sends them in batches.
DIRECT_GAP_S = 0.0002
#: ... and if its batch encodes to at most this many bytes (larger ones: the session thread).
DIRECT_MAX_BYTES = 64 << 10
#: A batch of at least this many operations means the program submits in a loop: the session
#: thread then waits config.LINGER_S before taking the next batch, and the program's thread queues
#: work meanwhile without waking it (each wake-up is a system call and a hand-over of the GIL,
#: which came to one per ~2 tasks submitted in a burst). A lone call (a few operations) leaves at once.
BURST_OPS = 8


class Client:
    """One session with the head. Thread-safe; every public method may be called from any thread."""

    def __init__(
        self,
        transport: Transport,
        *,
        kind: str = "driver",
        job_id: str = "",
        log_to_driver: bool = True,
        namespace: str = "",
        on_block: Callable[[bool], None] | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        self.kind = kind
        self.log_to_driver = log_to_driver
        self._cond = threading.Condition(threading.Lock())
        self._refs: dict[bytes, int] = {}
        self._values: dict[bytes, pb.Value] = {}
        self._subscribed: set[bytes] = set()
        self._expected: set[bytes] = set()  # returns of our own tasks: the head pushes them
        self._futures: dict[bytes, list[concurrent.futures.Future]] = {}
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._mapped: dict[bytes, weakref.ref] = {}  # stored objects mapped by this process
        self._requests: dict[int, concurrent.futures.Future] = {}
        self._streams: set[bytes] = set()  # streaming tasks of ours whose items may arrive
        # Calls straight to actors (driver/direct.py): what the head announced, the connections,
        # the values that came that way (a later word from the head about them is ignored), and
        # the calls that went through the head meanwhile (by their first return id).
        self._direct_info: dict[bytes, pb.ActorDirect] = {}
        self._channels: dict[bytes, DirectChannel] = {}
        self._direct_values: set[bytes] = set()
        self._head_calls: dict[bytes, int] = {}
        self._head_call_of: dict[bytes, bytes] = {}
        self._held: dict[bytes, list[pb.TaskSpec]] = {}  # calls waiting for the direct ones before them
        self._direct_calls = kind == "driver" and config.DIRECT_CALLS
        self._request_seq = 0
        self._outbox: list[pb.ClientOp] = []
        self._releases: collections.deque[bytes] = collections.deque()
        self._functions_sent: set[bytes] = set()  # the head holds these for us (until we release them)
        self._function_owners: dict[bytes, int] = {}  # live objects (remote functions) per function id
        self._owners: dict[int, weakref.finalize] = {}  # counted owners, by id(), with their finalizer
        self._owners_gone: collections.deque[tuple[bytes, int]] = collections.deque()  # from finalizers
        self._on_block = on_block
        self._error: str | None = None
        self.closed = False
        self.welcome: pb.Welcome | None = None
        self.store: ObjectStore | None = None
        self.transport = transport
        _clients.add(self)
        hello = pb.Hello(
            kind=kind, job_id=job_id, pid=os.getpid(), log_to_driver=log_to_driver,
            namespace=namespace, version=__version__,
        )
        self._outbox.append(pb.ClientOp(hello=hello))
        transport.start(self)
        self._wake()
        deadline = time.monotonic() + connect_timeout
        with self._cond:
            while self.welcome is None and self._error is None:
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    break
            if self.welcome is None:
                error = self._error or "no answer from the head"
                self.closed = True
        if self.welcome is None:
            transport.close()
            gone = HeadUnavailableError if getattr(transport, "unavailable", False) else ConnectionError
            raise gone(f"could not open a session with the starburst head: {error}")
        if self.welcome.head_version and self.welcome.head_version != __version__:
            self.closed = True
            transport.close()
            raise ConnectionError(
                f"the running starburst head is version {self.welcome.head_version} and this driver "
                f"{__version__}: stop that cluster ('starburst down') and start it again with this version")
        self.store = open_store(self.welcome.store_url)
        # Named actors live in a namespace: the one given to init(), else one private to this job.
        self.namespace = namespace or f"anonymous-{self.welcome.job_id}"
        self.inline_threshold: int = self.welcome.inline_threshold or config.INLINE_THRESHOLD

    # ------------------------------------------------------------------ outgoing operations

    def _send(self, *ops: pb.ClientOp) -> None:
        with self._cond:
            self._queue_locked(*ops)
        self.transport.send_now()

    def _wake(self) -> None:
        self.transport.wake()

    def take_outbox(self) -> list[pb.ClientOp]:
        """Called by the transport: everything queued to send, releases last."""
        with self._cond:
            ops, self._outbox = self._outbox, []
            while self._owners_gone:  # after the tasks that named it: the head keeps it for those
                function_id, owner_id = self._owners_gone.popleft()
                finalizer = self._owners.get(owner_id)
                if finalizer is not None and not finalizer.alive:  # (not a new owner at the same id)
                    del self._owners[owner_id]
                count = self._function_owners.get(function_id, 0) - 1
                if count > 0:
                    self._function_owners[function_id] = count
                    continue
                self._function_owners.pop(function_id, None)
                if function_id in self._functions_sent:
                    self._functions_sent.discard(function_id)
                    ops.append(pb.ClientOp(release_function=function_id))
            while self._releases:
                object_id = self._releases.popleft()
                count = self._refs.get(object_id, 0) - 1
                if count > 0:
                    self._refs[object_id] = count
                    continue
                self._refs.pop(object_id, None)
                self._values.pop(object_id, None)
                self._direct_values.discard(object_id)
                self._mapped.pop(object_id, None)
                self._subscribed.discard(object_id)
                self._expected.discard(object_id)
                ops.append(pb.ClientOp(release=object_id))
        usage = store_usage(self.store) if ops else None
        if usage is not None:  # the cost meter's S3 counts ride along with other work
            ops.append(pb.ClientOp(store_usage=usage))
        return ops

    def has_pending(self) -> bool:
        """Whether anything waits to be sent (released refs, or what may wait for the next batch)."""
        return bool(self._outbox or self._releases or self._owners_gone)

    def incref(self, object_id: bytes, borrowed: bool = False) -> None:
        with self._cond:
            count = self._refs.get(object_id, 0)
            self._refs[object_id] = count + 1
            if count == 0 and borrowed and not self.closed:
                self._outbox.append(pb.ClientOp(add_ref=object_id))
                wake = True
            else:
                wake = False
        if wake:
            self._wake()

    def decref(self, object_id: bytes) -> None:
        # Runs from finalizers, maybe inside the garbage collector on any thread: no locks here.
        self._releases.append(object_id)
        if not self.closed:
            self.transport.wake_soon()

    # ------------------------------------------------------------------ public operations

    def serialize_value(self, value: Any, key: str) -> pb.Value:
        """Serialize ``value`` inline, or into the object store under ``key`` when it is large."""
        ser = serialize(value)
        return self.value_from_serialized(ser, key)

    def value_from_serialized(self, ser: Serialized, key: str) -> pb.Value:
        assert self.store is not None
        return pack_value(ser, key, self.store, self.inline_threshold)

    def put(self, value: Any) -> ObjectRef:
        object_id = _ids.put_id()
        v = self.serialize_value(value, object_id.hex())
        ref = ObjectRef(object_id, self)
        with self._cond:
            self._values[object_id] = v
        self._send(pb.ClientOp(put=pb.Object(id=object_id, value=v)))
        return ref

    def put_error(self, error: pb.Value) -> ObjectRef:
        """An object whose ``get`` raises ``error`` (an error Value): a dynamic generator's last ref."""
        object_id = _ids.put_id()
        ref = ObjectRef(object_id, self)
        with self._cond:
            self._values[object_id] = error
        self._send(pb.ClientOp(put=pb.Object(id=object_id, value=error)))
        return ref

    def ping(self) -> None:
        """Ask the head for a sign of life (it answers with a pong from its event loop)."""
        with self._cond:
            if self.closed:
                return
            self._outbox.append(pb.ClientOp(ping=1))
        self._wake()

    def kill_self(self, actor_id: bytes, reason: str) -> None:
        """``exit_actor()``: ask the head to stop this actor for good (no restart)."""
        self.kill_actor(actor_id, True, reason)

    def kill_actor(self, actor_id: bytes, no_restart: bool, reason: str = "") -> None:
        """Ask the head to stop the actor's process. Calls made from now on go through the head, after
        the kill (a restarted actor is announced again)."""
        with self._cond:
            self._direct_info.pop(actor_id, None)
            channel = self._channels.pop(actor_id, None)
        if channel is not None:
            channel.close()
        self._send(pb.ClientOp(kill_actor=pb.KillActor(actor_id=actor_id, no_restart=no_restart, reason=reason)))

    def submit(self, spec: pb.TaskSpec, function: pb.Function | None, owner: Any = None) -> list[ObjectRef]:
        """Submit a task; ``function`` is sent first unless the head holds it for us. ``owner``: the
        object the function came from; once it is gone the head may drop the function."""
        # The refs count first: a result may come back before this returns.
        refs = [ObjectRef(rid, self) for rid in spec.return_ids]
        channel: DirectChannel | None = None
        held = False
        with self._cond:
            if self._direct_calls and spec.actor_id and not spec.HasField("actor"):
                channel, held = self._route_call(spec)
            ops = self._function_ops(function, owner)
            self._expected.update(spec.return_ids)
            if spec.generator == "streaming":
                # Its items are pushed as they are yielded: each is kept on arrival (the arrival counts
                # as one hold, handed over to the ref the generator returns). Registered before the
                # task leaves: its first items may come back before submit returns.
                self._streams.add(spec.task_id)
            if channel is None and not held:
                self._queue_locked(*ops, pb.ClientOp(submit=spec))
        if held:  # it leaves once the calls sent direct before it have ended
            return refs
        if channel is not None:
            if self._send_direct(channel, spec):
                return refs
            with self._cond:
                self._count_head_call(spec.actor_id, _first_return(spec))
                self._queue_locked(*ops, pb.ClientOp(submit=spec))
        self.transport.send_now()
        return refs

    def _queue_locked(self, *ops: pb.ClientOp) -> None:
        if self.closed:
            raise SessionLostError(f"the session with the head has ended: {self._error or 'closed'}")
        self._outbox.extend(ops)

    # ------------------------------------------------------------------ calls straight to actors

    def _route_call(self, spec: pb.TaskSpec) -> tuple[DirectChannel | None, bool]:
        """(Lock held.) How this actor call leaves: (the channel to send it on, False); (None, False):
        through the head now; (None, True): held, to go through the head once the calls sent direct
        before it have ended (the actor runs its calls in order). A call through the head is counted
        until its result comes: until then later calls go through the head too, after it."""
        actor_id = spec.actor_id
        held = self._held.get(actor_id)
        if held is not None:
            self._hold(spec)
            held.append(spec)
            return None, True
        info = self._direct_info.get(actor_id)
        channel = self._channels.get(actor_id)
        if info is not None and (channel is None or channel.incarnation != info.incarnation):
            if channel is not None:
                channel.close()
            channel = self._channels[actor_id] = DirectChannel(info, self._on_direct_done, self._on_direct_lost)
        if channel is None or info is None:
            self._count_head_call(spec.actor_id, _first_return(spec))
            return None, False
        if (channel.alive and not spec.deps and not spec.args.contained and not spec.generator
                and not self._head_calls.get(actor_id) and not spec.method.startswith("__ray_")):
            # (refs inside its arguments must reach the head first; __ray_terminate__ is the head's)
            channel.inflight[spec.task_id] = _first_return(spec)
            return channel, False
        if channel.ordered and channel.inflight:
            self._hold(spec)
            self._held[actor_id] = [spec]
            return None, True
        self._count_head_call(spec.actor_id, _first_return(spec))
        return None, False

    def _hold(self, spec: pb.TaskSpec) -> None:
        """(Lock held.) The refs a held call names stay held here until it has left (their release
        would reach the head before the call)."""
        for object_id in (*spec.deps, *spec.args.contained):
            self._refs[object_id] = self._refs.get(object_id, 0) + 1

    def _release_held(self, actor_id: bytes) -> bool:
        """(Lock held.) The calls held for this actor go to the head, in order; True if there were."""
        held = self._held.pop(actor_id, None)
        for spec in held or ():
            self._count_head_call(spec.actor_id, _first_return(spec))
            self._outbox.append(pb.ClientOp(submit=spec))
            self._releases.extend((*spec.deps, *spec.args.contained))  # (sent after it)
        return bool(held)

    def _count_head_call(self, actor_id: bytes, first_return: bytes) -> None:
        """(Lock held.) Until this call's result comes, later calls to this actor go through the head too."""
        if first_return:
            self._head_call_of[first_return] = actor_id
            self._head_calls[actor_id] = self._head_calls.get(actor_id, 0) + 1

    def _send_direct(self, channel: DirectChannel, spec: pb.TaskSpec) -> bool:
        """Write the call to the actor's process; the head hears of it with the next batch."""
        spec.direct = channel.incarnation
        if not spec.job_id and self.welcome is not None:
            spec.job_id = self.welcome.job_id  # (the head fills it in for the calls it sends)
        with self._cond:  # the head hears of the call before of its end (the reply takes this lock)
            if self.closed:
                raise SessionLostError(f"the session with the head has ended: {self._error or 'closed'}")
            sent = channel.send(pb.Run(spec=spec))
            if sent:
                self._outbox.append(pb.ClientOp(submit=spec))
        if sent:
            self.transport.wake_soon()
            return True
        spec.direct = 0
        with self._cond:
            channel.inflight.pop(spec.task_id, None)  # (it never left: the head gets it instead)
        self._on_direct_lost(channel)
        return False

    def _on_direct_done(self, channel: DirectChannel, done: pb.TaskDone) -> None:
        """(The channel's reader thread.) A call sent direct has ended."""
        ready_futures: list = []
        with self._cond:
            channel.inflight.pop(done.task_id, None)
            if not done.via_node:  # (else its values come from the head)
                for result in done.results:
                    if self._arrived(result.id, result.value, ready_futures):
                        self._direct_values.add(result.id)
                self._outbox.append(pb.ClientOp(direct_done=done))
            released = not channel.inflight and self._release_held(channel.actor_id)
        for fut, value in ready_futures:
            self._resolve_future(fut, value)
        if released:
            self._wake()
        elif not done.via_node:
            self.transport.wake_soon()

    def _on_direct_lost(self, channel: DirectChannel) -> None:
        """The actor's process is gone (or unreachable): the head is told which calls sent on the
        channel were not answered (it retries or fails them; their values then come from it, and
        later calls go through the head after them)."""
        with self._cond:
            channel.alive = False
            for task_id, first_return in channel.inflight.items():
                self._outbox.append(pb.ClientOp(direct_done=pb.TaskDone(
                    task_id=task_id, failure=pb.TaskDone.WORKER_DIED)))
                self._count_head_call(channel.actor_id, first_return)
            told = bool(channel.inflight)
            channel.inflight.clear()
            if self._channels.get(channel.actor_id) is channel:
                del self._channels[channel.actor_id]
            info = self._direct_info.get(channel.actor_id)
            if info is not None and info.incarnation == channel.incarnation:
                del self._direct_info[channel.actor_id]
            released = self._release_held(channel.actor_id)
        if (told or released) and not self.closed:
            self._wake()

    def request(self, request: pb.ActorRequest, timeout: float = 60.0) -> pb.ActorReply:
        """A synchronous question to the head (named actors, cluster state)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._request_seq += 1
            request.request_id = self._request_seq
            self._requests[request.request_id] = fut
        self._send(pb.ClientOp(request=request))
        try:
            return fut.result(timeout)
        finally:
            with self._cond:
                self._requests.pop(request.request_id, None)

    def send_function(self, function: pb.Function, owner: Any = None) -> None:
        with self._cond:
            ops = self._function_ops(function, owner)
            self._queue_locked(*ops)
        if ops:
            self._wake()

    def _function_ops(self, function: pb.Function | None, owner: Any) -> list[pb.ClientOp]:
        """(Lock held.) Count ``owner`` as a user of ``function``; the op that sends it, unless the
        head holds it for us. Queue it in the same step as the task that names it."""
        if function is None:
            return []
        if owner is not None:
            self._track_owner(function.id, owner)
        if function.id in self._functions_sent:
            return []
        _check_size(function)  # before it counts as sent: a refused one is never recorded
        self._functions_sent.add(function.id)
        return [pb.ClientOp(function=function)]

    def _track_owner(self, function_id: bytes, owner: Any) -> None:
        """(Lock held.) Count ``owner`` once; when it is collected, the function is released."""
        known = self._owners.get(id(owner))
        if known is not None and known.alive:  # this very object (a dead one's id may be reused)
            return
        finalizer = weakref.finalize(owner, _owner_gone, weakref.ref(self), function_id, id(owner))
        finalizer.atexit = False
        self._owners[id(owner)] = finalizer
        self._function_owners[function_id] = self._function_owners.get(function_id, 0) + 1

    def submit_creation(self, spec: pb.TaskSpec, function: pb.Function, owner: Any = None) -> None:
        """Start an actor; this session holds its first handle."""
        with self._cond:
            ops = self._function_ops(function, owner)
            self._refs[spec.actor_id] = self._refs.get(spec.actor_id, 0) + 1
            self._queue_locked(*ops, pb.ClientOp(submit=spec))
        self._wake()

    def unregister_stream(self, task_id: bytes) -> None:
        """Items of this streaming task are no longer wanted (released on arrival); see :meth:`submit`."""
        with self._cond:
            self._streams.discard(task_id)

    def has_value(self, object_id: bytes) -> bool:
        return object_id in self._values

    def wait_any(self, ids: list[bytes], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_ready(ids, 1, deadline, stop_on_error=False)

    def peek_count(self, object_id: bytes) -> tuple[int | None, bool]:
        """(item count, is_error) of a streaming task's end marker, if it has arrived."""
        value = self._values.get(object_id)
        if value is None:
            return None, False
        if value.is_error:
            return None, True
        return self.load(value), False

    def hold(self, object_id: bytes) -> None:
        """Count a reference the head already knows this session holds (no add_ref sent)."""
        with self._cond:
            self._refs[object_id] = self._refs.get(object_id, 0) + 1

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        with self._cond:
            channels = list(self._channels.values())
        for channel in channels:  # calls waiting to leave go first: the cancel must find them there
            channel.flush()
        self._send(pb.ClientOp(cancel=pb.Cancel(object_id=ref._id, force=force, recursive=recursive)))

    def _ensure_subscribed(self, ids: Iterable[bytes]) -> None:
        """Ask the head for values we are not already promised (call with the lock held)."""
        for object_id in ids:
            if object_id in self._values or object_id in self._subscribed or object_id in self._expected:
                continue
            if _ids.task_of(object_id) in self._streams:  # a streaming item: pushed when it is yielded
                continue
            self._subscribed.add(object_id)
            self._outbox.append(pb.ClientOp(subscribe=object_id))

    def _wait_ready(self, ids: list[bytes], num: int, deadline: float | None, stop_on_error: bool) -> None:
        """Block until ``num`` of ``ids`` have values (or one is an error, or the deadline passes)."""
        if num <= 0:
            return
        with self._cond:
            if self._error is not None:
                raise SessionLostError(f"lost the session with the head: {self._error}")
            queued = len(self._outbox)
            self._ensure_subscribed(ids)
            subscribed = len(self._outbox) > queued
            waiter = _Waiter(num, stop_on_error)
            for object_id in ids:
                v = self._values.get(object_id)
                if v is not None:
                    waiter.arrived(v)
                else:
                    self._waiters.setdefault(object_id, []).append(waiter)
            if waiter.event.is_set():
                self._drop_waiter(waiter, ids)
                return
        if subscribed:
            self._wake()
        blocked = False
        on_block = self._on_block
        try:
            if on_block is not None and not waiter.event.wait(0.001):
                blocked = True
                on_block(True)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            waiter.event.wait(remaining)
        finally:
            with self._cond:
                self._drop_waiter(waiter, ids)
            if blocked and on_block is not None:
                on_block(False)
        if waiter.lost:
            raise SessionLostError(f"lost the session with the head: {self._error}")

    def _drop_waiter(self, waiter: "_Waiter", ids: list[bytes]) -> None:
        if waiter.registered_all_done:
            return
        waiter.registered_all_done = True
        for object_id in ids:
            waiters = self._waiters.get(object_id)
            if waiters:
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
                if not waiters:
                    del self._waiters[object_id]

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        ids = [r._id for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_ready(ids, len(ids), deadline, stop_on_error=True)
        drain_output()
        with self._cond:
            values = [self._values.get(i) for i in ids]
        for v in values:  # the first error that arrived raises at once
            if v is not None and v.is_error:
                self._raise(v)
        if any(v is None for v in values):
            missing = sum(v is None for v in values)
            raise GetTimeoutError(
                f"Get timed out: {missing} of {len(ids)} object(s) not ready after {timeout} s"
            )
        return [self._load_result(v, i) for v, i in zip(values, ids)]

    def _load_result(self, value: pb.Value | None, object_id: bytes) -> Any:
        assert value is not None
        try:
            return self.load(value, object_id)
        except Exception as exc:
            raise RaySystemError(
                f"the value of ObjectRef({object_id.hex()}) could not be deserialized in this process: "
                f"{type(exc).__name__}: {exc}") from exc

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        ids = [r._id for r in refs]
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_ready(ids, num_returns, deadline, stop_on_error=False)
        drain_output()
        ready: list[ObjectRef] = []
        not_ready: list[ObjectRef] = []
        with self._cond:
            for ref in refs:
                if len(ready) < num_returns and ref._id in self._values:
                    ready.append(ref)
                else:
                    not_ready.append(ref)
        return ready, not_ready

    def future(self, ref: ObjectRef) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        # The future holds the ref, so the value stays alive until the future is done.
        fut._starburst_ref = ref  # type: ignore[attr-defined]
        with self._cond:
            value = self._values.get(ref._id)
            if value is None:
                self._futures.setdefault(ref._id, []).append(fut)
                self._ensure_subscribed([ref._id])
        if value is not None:
            self._resolve_future(fut, value)
        else:
            self._wake()
        return fut

    def _resolve_future(self, fut: concurrent.futures.Future, value: pb.Value) -> None:
        try:
            if value.is_error:
                self._raise(value)
            result = self.load(value, fut._starburst_ref._id)  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - delivered to the future's owner
            if not fut.cancelled():
                fut.set_exception(exc)
        else:
            if not fut.cancelled():
                fut.set_result(result)

    def load(self, value: pb.Value, object_id: bytes | None = None) -> Any:
        """Deserialize a value (zero-copy from the object store for large ones).

        While a value from a stored object is alive, later gets of it share its mapping (as in
        Ray); the mapping (and its file descriptor) goes away with the last value using it."""
        assert self.store is not None
        if object_id is None or value.WhichOneof("where") != "key":
            return load_value(value, self.store)
        cached = self._mapped.get(object_id)
        mapping = cached() if cached is not None else None
        if mapping is not None:
            return deserialize(memoryview(mapping))
        view = self.store.get(value.key)
        if view.obj is not None:
            try:
                self._mapped[object_id] = weakref.ref(view.obj)
            except TypeError:  # not weak-referenceable (e.g. bytes from another store)
                pass
        return deserialize(view)

    def _raise(self, value: pb.Value) -> None:
        try:
            error = self.load(value)
        except Exception as exc:
            raise RaySystemError(f"a task failed, and its error could not be deserialized in this process: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if isinstance(error, RayTaskError):
            raise error.as_instanceof_cause()
        if isinstance(error, BaseException):
            raise error
        raise RaySystemError(f"malformed error value: {error!r}")

    # ------------------------------------------------------------------ incoming messages

    def on_message(self, msg: pb.HeadMsg) -> None:
        """Called by the transport for every batch from the head."""
        ready_futures: list = []
        failed_futures: list = []
        unwanted = False
        for op in msg.ops:  # output first: it was written before the results in this batch
            if op.WhichOneof("op") == "log":
                _printer().print(op.log)
        with self._cond:
            for op in msg.ops:
                kind = op.WhichOneof("op")
                if kind == "ready":
                    object_id = op.ready.id
                    if self._head_call_of:
                        actor_id = self._head_call_of.pop(object_id, None)
                        if actor_id is not None:
                            self._head_calls[actor_id] -= 1
                            if not self._head_calls[actor_id]:
                                del self._head_calls[actor_id]
                    if object_id in self._direct_values:
                        continue  # it came straight from the actor (the head may tell later of its retry)
                    if not self._arrived(object_id, op.ready.value, ready_futures):
                        # Pushed for us but no longer wanted (e.g. a streaming item nobody iterates):
                        # let it go. The head ignores a release for what we don't hold.
                        self._outbox.append(pb.ClientOp(release=object_id))
                        unwanted = True
                elif kind == "actor_direct":
                    if self._direct_calls:
                        self._direct_info[op.actor_direct.actor_id] = op.actor_direct
                elif kind == "forget_function":  # sent again before a task names it
                    if op.forget_function in self._functions_sent:
                        self._functions_sent.discard(op.forget_function)
                        self._outbox.append(pb.ClientOp(release_function=op.forget_function))
                        unwanted = True
                elif kind == "reply":
                    request = self._requests.get(op.reply.request_id)
                    if request is not None and not request.done():
                        request.set_result(op.reply)
                elif kind == "welcome":
                    self.welcome = op.welcome
                    self._cond.notify_all()
                elif kind == "error":  # the session ends (e.g. the cluster stopped): wake every waiter
                    self._error = op.error
                    failed_futures.extend(self._release_waiters())
        for fut, value in ready_futures:
            self._resolve_future(fut, value)
        self._fail_futures(failed_futures)
        if unwanted:
            self._wake()

    def _arrived(self, object_id: bytes, value: pb.Value, ready_futures: list) -> bool:
        """(Lock held.) ``object_id`` has ``value``; False if we don't hold it (any more)."""
        if object_id not in self._refs and _ids.task_of(object_id) in self._streams:
            self._refs[object_id] = 1  # the arrival hold of a streaming item
        if object_id not in self._refs:
            return False
        self._values[object_id] = value
        self._expected.discard(object_id)
        for fut in self._futures.pop(object_id, ()):
            ready_futures.append((fut, value))
        for waiter in self._waiters.pop(object_id, ()):
            waiter.arrived(value)
        return True

    def on_closed(self, error: str) -> None:
        """Called by the transport when the session ends."""
        with self._cond:
            if self._error is None:
                self._error = error
            self.closed = True
            futures = self._release_waiters()
        self._fail_futures(futures)

    def _release_waiters(self) -> list:
        """With the lock held, once ``_error`` is set: wake every blocked get/wait (they raise
        with the error), fail pending requests; returns the ObjectRef futures to fail."""
        futures = [f for fs in self._futures.values() for f in fs]
        self._futures.clear()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.event.is_set():
                    waiter.lost = True
                    waiter.event.set()
        self._waiters.clear()
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(SessionLostError(f"lost the session with the head: {self._error}"))
        self._cond.notify_all()
        return futures

    def _fail_futures(self, futures: list) -> None:
        for fut in futures:
            if not fut.done():
                fut.set_exception(SessionLostError(f"lost the session with the head: {self._error}"))

    def error_text(self) -> str:
        return self._error or "closed"

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._error = self._error or "closed"
            usage = store_usage(self.store)
            if usage is not None:  # the last S3 counts leave with the session's last message
                self._outbox.append(pb.ClientOp(store_usage=usage))
            self._cond.notify_all()
            channels, self._channels = list(self._channels.values()), {}
        self.transport.close()
        for channel in channels:
            channel.close()


def _first_return(spec: pb.TaskSpec) -> bytes:
    """The id a call is tracked by until its result comes (b"": it returns nothing)."""
    return spec.return_ids[0] if spec.return_ids else b""


#: The clients of this process. A forked child shares their sockets with its parent: it must never
#: write to them (its calls would land in the middle of the parent's streams).
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _in_forked_child() -> None:
    for client in list(_clients):
        client._direct_calls = False  # its channels to actors are the parent's
        if isinstance(client.transport, GrpcTransport):
            client.transport._framed = None  # and so is its session with the head


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)


def _owner_gone(client_ref: "weakref.ref[Client]", function_id: bytes, owner_id: int) -> None:
    """A remote function (or actor class) was collected: its session may release the function."""
    # Runs from the garbage collector, maybe on any thread: no locks here.
    client = client_ref()
    if client is not None and not client.closed:
        client._owners_gone.append((function_id, owner_id))
        client._wake()


def _check_size(function: pb.Function) -> None:
    """Refuse a function too large for one message before it is sent (the head would end the session)."""
    size = function.ByteSize()
    if size > config.MAX_MESSAGE_BYTES - (1 << 20):
        raise ValueError(
            f"{function.name or 'the function'} pickles to {size / 2**20:.0f} MiB, more than a message to the "
            f"head may carry ({config.MAX_MESSAGE_BYTES / 2**20:.0f} MiB): it captures large data; pass that as "
            "an argument or through starburst.put() instead (large values go through the object store)")


class _Waiter:
    """One blocked get()/wait(): counts arrivals so the caller is woken once, not per value."""

    __slots__ = ("needed", "stop_on_error", "event", "registered_all_done", "lost")

    def __init__(self, num: int, stop_on_error: bool) -> None:
        self.lost = False  # woken because the session ended, not because values arrived
        self.needed = num
        self.stop_on_error = stop_on_error
        self.event = threading.Event()
        self.registered_all_done = False

    def arrived(self, value: pb.Value) -> None:
        self.needed -= 1
        if self.needed <= 0 or (self.stop_on_error and value.is_error):
            self.event.set()


class _Printer:
    """Prints task output on a thread of its own, so that a stuck stdout (a pipe nobody reads) never
    blocks the session. At most ``limit`` bytes wait; beyond that lines are dropped and counted, and
    the count is printed once the stream moves again."""

    def __init__(self, limit: int = 8 << 20) -> None:
        self.limit = limit
        self._queue: collections.deque[pb.Log] = collections.deque()
        self._bytes = 0
        self._dropped = 0
        self._writing = False
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="starburst-output", daemon=True).start()

    def print(self, log: pb.Log) -> None:
        with self._cond:
            if self._bytes + len(log.text) > self.limit:
                self._dropped += log.text.count("\n") + 1
                return
            self._queue.append(log)
            self._bytes += len(log.text)
            self._cond.notify_all()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for what is queued to be printed (output before the results it
        preceded, as long as the stream is being read)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    return

    def _run(self) -> None:
        while True:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
                while not self._queue:
                    self._cond.wait()
                log = self._queue.popleft()
                self._writing = True
                self._bytes -= len(log.text)
                dropped, self._dropped = self._dropped, 0
            if dropped:
                try:
                    sys.stderr.write(f"(starburst: {dropped} lines of task output were dropped: this process's "
                                     "output was not being read)\n")
                except (ValueError, OSError):
                    pass
            print_log(log)


_the_printer: _Printer | None = None
_printer_lock = threading.Lock()


def drain_output(timeout: float = 0.5) -> None:
    """Let task output queued so far reach the terminal first (bounded: a stuck stream can't block)."""
    if _the_printer is not None:
        _the_printer.drain(timeout)


def _printer() -> _Printer:
    global _the_printer
    if _the_printer is None:
        with _printer_lock:
            if _the_printer is None:
                _the_printer = _Printer()
    return _the_printer


def print_log(log: pb.Log) -> None:
    """Show a task's output in the driver's terminal, prefixed with where it ran (like Ray)."""
    where = f"pid={log.pid}" + (f", node={log.node}" if log.node else "")
    prefix = f"({log.task_name} {where}) "
    stream = sys.stdout if log.stream == 1 else sys.stderr
    lines = log.text.splitlines()
    if _tqdm_ray.MARK in log.text or _tqdm_ray.active():  # tqdm_ray bars: drawn, not printed
        lines = [line for line in lines if not _tqdm_ray.show(prefix, line)]
        if lines:
            _tqdm_ray.write(stream, "".join(prefix + line + "\n" for line in lines))
        return
    text = "".join(prefix + line + "\n" for line in lines)
    try:
        stream.write(text)
        stream.flush()
    except (ValueError, OSError):  # the stream was closed at interpreter exit
        pass


class HeadUnavailableError(ConnectionError):
    """The head found in ``head.json`` ended (or was ending) before a session with it opened."""


class GrpcTransport:
    """One bidirectional gRPC stream to the head, driven by an asyncio loop on a daemon thread."""

    def __init__(self, address: str) -> None:
        from .._auth import parse_address

        self.address = address
        self._target, self._token = parse_address(address)  # ValueError: no token to present
        #: The head refused or couldn't take the stream (UNAVAILABLE: gone, or shutting down).
        self.unavailable = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._wake_pending = False
        self._flush_armed = False  # a flush of released refs is due within RELEASE_DELAY_S
        self._last_batch = 0.0  # time.monotonic() of the last batch written
        #: The session with a local head while it is open: callers' threads may write to it (not
        #: in a forked child: see _in_forked_child).
        self._framed: FramedStream | None = None
        #: Operations a caller's thread took but left to the session thread (sent before any others).
        self._carried: list[pb.ClientOp] = []
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = False
        self._client: Client | None = None
        self._done = threading.Event()

    def start(self, client: Client) -> None:
        self._client = client
        self._thread = threading.Thread(target=self._run, name="starburst-session", daemon=True)
        self._thread.start()
        self._started.wait()

    def send_now(self) -> None:
        framed = self._framed
        if (framed is None or self._wake_pending or time.monotonic() - self._last_batch < DIRECT_GAP_S
                or not self._send_now(framed)):
            self.wake()

    def wake(self) -> None:
        if self._wake_pending or self._loop is None:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake_event.set)  # type: ignore[union-attr]
        except RuntimeError:  # loop already closed
            pass

    def _send_now(self, framed: FramedStream) -> bool:
        """Send what the client has queued from the calling thread; False: wake the session thread."""
        client, loop = self._client, self._loop
        assert client is not None and loop is not None
        with framed.lock:  # taken and written in one go: the session thread's batches keep their order
            if self._stopping or self._carried or not framed.can_put_from_thread():
                return False
            ops = client.take_outbox()
            if not ops:
                return True
            messages = config.batch_messages(pb.ClientMsg, ops)
            if len(messages) > 1 or messages[0].ByteSize() > DIRECT_MAX_BYTES:
                self._carried = ops
                return False
            framed.put_from_thread(messages[0])
            self._last_batch = time.monotonic()
            armed, self._flush_armed = self._flush_armed, True
        if not armed:
            try:
                loop.call_soon_threadsafe(loop.call_later, RELEASE_DELAY_S, self._flush_due)
            except RuntimeError:  # the session ended meanwhile (its loop is closed)
                pass
        return True

    def wake_soon(self) -> None:
        # Releases ride with the next batch: a loop of get(f.remote()) releases each result right
        # after its get, and waking the session thread for that alone cost a wake-up per call.
        # (The flag is read after the caller queued its release and cleared before the loop looks
        # for releases: one of the two always sees the other.)
        if not self._flush_armed:
            self.wake()

    def _flush_due(self) -> None:
        loop = self._loop
        if loop is not None and time.monotonic() - self._last_batch < RELEASE_ACTIVE_S and not self._stopping:
            loop.call_later(RELEASE_DELAY_S, self._flush_due)  # still armed
        else:
            self._flush_armed = False
        client = self._client
        if client is not None and client.has_pending():
            self.wake()

    def close(self) -> None:
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake_event.set)  # type: ignore[union-attr]
            except RuntimeError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._done.wait(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._wake_event = asyncio.Event()
        self._started.set()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
            self._done.set()

    async def _main(self) -> None:
        import grpc

        from .._auth import call_metadata
        from .._proto import starburst_pb2_grpc as pb_grpc
        from ..framing import SESSION_SOCKET

        error = "closed"
        framed = None
        if self._target.startswith("unix:") and os.environ.get("STARBURST_DRIVER_LINK") != "grpc":
            framed = os.path.join(os.path.dirname(self._target[len("unix:"):]), SESSION_SOCKET)
            if not os.path.exists(framed):
                framed = None  # a head of an earlier version: gRPC only
        if framed is not None:
            # A head on this machine: framed protobuf over its session socket (a fraction of a gRPC
            # message's cost at both ends), the token first.
            try:
                reader, writer = await asyncio.open_unix_connection(framed)
            except OSError as exc:
                self.unavailable = True
                error = f"the head at {self.address} is gone or does not answer ({exc})"
            else:
                stream = FramedStream(reader, writer, pb.HeadMsg, config.MAX_MESSAGE_BYTES)
                try:
                    await stream.write_frame(self._token.encode())
                    self._framed = stream
                    error = await self._session(stream)
                except (ConnectionError, OSError) as exc:
                    self.unavailable = True
                    error = f"the head at {self.address} is gone or does not answer ({exc})"
                finally:
                    self._framed = None
                    stream.close()
        else:
            async with grpc.aio.insecure_channel(self._target, options=config.GRPC_OPTIONS) as channel:
                error = await self._session(pb_grpc.HeadStub(channel).Session(metadata=call_metadata(self._token)))
        if self._stopping:
            error = "closed"
        assert self._client is not None
        self._client.on_closed(error)

    async def _session(self, call: Any) -> str:
        """Carry the session over ``call`` (a gRPC stream, or a FramedStream with the same
        read/write/done_writing/cancel) until it ends; returns why it ended."""
        import grpc

        from ..framing import FrameTooLarge

        client, wake = self._client, self._wake_event
        assert client is not None and wake is not None
        too_large = ""
        framed = call if isinstance(call, FramedStream) else None
        lock: Any = framed.lock if framed is not None else contextlib.nullcontext()

        async def writer() -> None:
            nonlocal too_large
            # While it writes, _wake_pending stays set: callers adding work don't wake the loop
            # again (each wake-up costs a system call and a GIL hand-over).
            while True:
                await wake.wait()
                wake.clear()
                while True:
                    with lock:  # (a local head's: callers' threads write to it too)
                        ops, self._carried = self._carried + client.take_outbox(), []
                        if not ops:
                            self._wake_pending = False
                            ops = client.take_outbox()  # work added just before the flag cleared
                            if not ops:
                                break
                            self._wake_pending = True
                        messages = config.batch_messages(pb.ClientMsg, ops)
                        if framed is not None:  # written now, under the lock; gRPC's below
                            try:
                                for message in messages:
                                    framed.put(message)
                            except FrameTooLarge:  # what the head would refuse (gRPC: RESOURCE_EXHAUSTED)
                                too_large = "RESOURCE_EXHAUSTED: a message over the head's limit"
                    if too_large:
                        call.cancel()
                        return
                    if framed is not None:
                        await framed.drain()
                    else:
                        for message in messages:
                            await call.write(message)
                    self._last_batch = time.monotonic()
                    if not self._flush_armed:  # releases made from now on wait for the next batch
                        self._flush_armed = True
                        asyncio.get_running_loop().call_later(RELEASE_DELAY_S, self._flush_due)
                    if len(ops) >= BURST_OPS and not self._stopping:  # more are coming: let them gather
                        await asyncio.sleep(config.LINGER_S)
                if self._stopping:
                    await call.done_writing()
                    return

        heard = [time.monotonic()]
        silent = False

        async def heartbeat() -> None:
            # The head answers a ping from its event loop: silence for HEAD_TIMEOUT_S means a
            # paused, frozen or unreachable head (gRPC's keepalive alone took about a minute).
            nonlocal silent
            timeout = config.HEAD_TIMEOUT_S
            step = timeout / 6
            while True:
                before = time.monotonic()
                await asyncio.sleep(step)
                now = time.monotonic()
                if now - before > 2 * step:  # this process stalled, not the head: a fresh window
                    heard[0] = max(heard[0], now - step)
                quiet = now - heard[0]
                if quiet > timeout:
                    silent = True
                    call.cancel()
                    return
                if quiet > timeout / 3:
                    client.ping()

        error = "closed"
        writer_task = asyncio.ensure_future(writer())
        heartbeat_task = asyncio.ensure_future(heartbeat()) if config.HEAD_TIMEOUT_S > 0 else None
        answered = False
        try:
            while True:
                msg = await call.read()
                heard[0] = time.monotonic()
                if msg is grpc.aio.EOF:
                    break
                answered = True
                client.on_message(msg)
            if answered:
                error = "the head closed the session"
            else:  # a framed session closed unanswered: the head refuses sessions while shutting
                self.unavailable = True  # down (gRPC says UNAVAILABLE; init() starts a new cluster)
                error = f"the head at {self.address} is shutting down (it closed the session)"
        except asyncio.CancelledError:
            if not silent:
                raise
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                too_large = error
            elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.unavailable = True
                error = f"the head at {self.address} is gone or does not answer ({error})"
        finally:
            if heartbeat_task is not None:
                heartbeat_task.cancel()
            writer_task.cancel()
            try:
                await writer_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if silent:  # cancelled by the heartbeat
            error = (f"the head at {self.address} does not answer: nothing came from it for "
                     f"{config.HEAD_TIMEOUT_S:g} s (a paused or frozen head; STARBURST_HEAD_TIMEOUT_S)")
        elif too_large:
            error = (too_large + f" (a message to the head exceeded its {config.MAX_MESSAGE_BYTES >> 20} MiB limit "
                     "and the head ended this session)")
        return error
