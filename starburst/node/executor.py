"""An executor process: runs the node's tasks one at a time.

It talks to its node over a Unix socket (framing.py). Its stdout and stderr (file descriptors 1
and 2, so C extensions' output too) are pipes that it forwards, line by line and tagged with the
running task, to the node and on to the driver. When a task uses the API (nested tasks, ``get``), a
session with the head is opened lazily and relayed through the node.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import inspect
import io
import faulthandler
import hmac
import os
import pickle
import collections
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any, NoReturn

import cloudpickle

from .. import _runtime, runtime_env
from .._memory import trim as trim_memory
from .._proto import starburst_pb2 as pb
from ..exceptions import ActorDiedError, AsyncioActorExit, ObjectStoreFullError, RaySystemError, RayTaskError
from ..generators import DynamicObjectRefGenerator
from ..serialization import serialize
from ..store import error_value, load_value, open_store, pack_value, store_usage
from .. import config
from ..framing import ACTOR_SOCKET, FrameTooLarge, encode, iter_frames
from .crash_report import crash_report_path


class Executor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.id = args.id
        self.node = args.node
        self.store = open_store(args.store)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(args.socket)
        self.socket_path = args.socket
        self.send_lock = threading.RLock()
        self.pending: collections.deque[pb.Run] = collections.deque()  # queued here by the node
        self.pending_cond = threading.Condition()
        self.blocked = False
        self.functions: dict[bytes, Any] = {}
        self.function_msgs: dict[bytes, pb.Function] = {}  # received, not unpickled yet
        self.current: pb.Run | None = None
        self.log_owner = ("executor", "")
        self.actor_instance: Any = None
        self.actor_id = b""
        self.actor_name = ""
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_semaphore: asyncio.Semaphore | None = None
        self.actor_tasks: set[asyncio.Task] = set()
        self.async_calls: dict[bytes, asyncio.Task] = {}  # running calls of an async actor, by task id
        self.cancel_requested: bytes | None = None
        self.client: Any = None
        self.client_lock = threading.Lock()
        self.node_pid = os.getppid()
        self.pid = os.getpid()
        #: Calls that came straight from a caller (ActorDirect), by task id: their TaskDone goes
        #: back on that caller's connection, not to the node.
        self.direct_replies: dict[bytes, _DirectCaller] = {}
        self.direct: tuple[str, str] | None = None  # (socket path, token) once listening
        self.output_mark = 0  # lines of output forwarded when the running call started

    def send(self, msg: pb.ExecutorMsg) -> None:
        data = encode(msg)
        with self.send_lock:
            self.sock.sendall(data)

    # ----------------------------------------------------------------------- node -> executor

    def _read_loop(self) -> None:
        try:
            self._read_frames()
        finally:  # the node is gone or told us to go; a thread that dies must not leave us running
            os._exit(0)

    def _read_frames(self) -> None:
        # Every frame that has arrived is taken with one read: a node streaming calls to an actor
        # would otherwise have this thread take the GIL from the one running them twice per call.
        for frame in iter_frames(self.sock):
            self._on_message(pb.NodeToExecutorMsg.FromString(frame))
        os._exit(0)  # the node closed our socket: it is stopping, or retiring us

    def _on_message(self, msg: pb.NodeToExecutorMsg) -> None:
        kind = msg.WhichOneof("op")
        if kind == "run":
            if msg.run.HasField("function"):  # keep it now: this run may be handed back unrun
                self.function_msgs[msg.run.function.id] = msg.run.function
            with self.pending_cond:
                if self.blocked:  # we lent our CPU away: the node places it elsewhere
                    self.send(pb.ExecutorMsg(returned=pb.Returned(task_ids=[msg.run.spec.task_id])))
                else:
                    self.pending.append(msg.run)
                    self.pending_cond.notify()
        elif kind == "forget_function":  # the node sends it again if a task of it comes
            self.function_msgs.pop(msg.forget_function, None)
            if self.functions.pop(msg.forget_function, None) is not None:
                trim_memory()
        elif kind == "down":
            client = self.client
            if client is not None:
                client.on_message(msg.down)
        elif kind == "recall":  # the node places these elsewhere, unless one has started
            wanted = set(msg.recall.task_ids)
            with self.pending_cond:
                back = [r for r in self.pending if r.spec.task_id in wanted]
                for r in back:
                    self.pending.remove(r)
                if back:
                    self.send(pb.ExecutorMsg(returned=pb.Returned(task_ids=[r.spec.task_id for r in back])))
        elif kind == "cancel":
            with self.pending_cond:
                queued = next((r for r in self.pending if r.spec.task_id == msg.cancel), None)
                if queued is not None:
                    self.pending.remove(queued)
                    self.send(pb.ExecutorMsg(done=pb.TaskDone(
                        task_id=msg.cancel, failure=pb.TaskDone.CANCELLED)))
                    caller = self.direct_replies.pop(msg.cancel, None)
                    if caller is not None:  # a direct call: its caller gets its end from the head
                        caller.send(pb.TaskDone(task_id=msg.cancel, via_node=True))
                    return
            _runtime.cancelled_tasks.add(msg.cancel)
            if self.actor_loop is not None:  # an async actor: cancel that call's asyncio task
                self.actor_loop.call_soon_threadsafe(self._cancel_async_call, msg.cancel)
                return
            if self.actor_id:  # as in Ray, a running call of a sync or threaded actor is not
                return         # interrupted (actors have state): it can check is_canceled()
            run = self.current
            if run is not None and run.spec.task_id == msg.cancel:
                self.cancel_requested = msg.cancel
                os.kill(os.getpid(), signal.SIGINT)

    def _cancel_async_call(self, task_id: bytes) -> None:
        task = self.async_calls.get(task_id)
        if task is not None:
            task.cancel()

    def _on_sigint(self, signum, frame) -> None:
        run = self.current
        if run is not None and self.cancel_requested == run.spec.task_id:
            raise KeyboardInterrupt("task cancelled")

    def _watch_node(self) -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != self.node_pid:
                os._exit(1)

    # ----------------------------------------------------------------------- the relayed session

    def make_client(self):
        from ..driver.client import Client

        with self.client_lock:
            if self.client is None:
                ctx = _runtime.current_task()
                self.client = Client(
                    _RelayTransport(self), kind="executor", job_id=ctx.job_id if ctx else "",
                    on_block=self._on_block,
                )
            return self.client

    def _on_block(self, blocked: bool) -> None:
        run = self.current
        if run is None or self.actor_id:  # actors hold no pool CPU to lend
            return
        with self.pending_cond:
            self.blocked = blocked
            if blocked and self.pending:
                # Work queued behind a task that now waits (maybe on that very work) goes back.
                ids = [r.spec.task_id for r in self.pending]
                self.pending.clear()
                self.send(pb.ExecutorMsg(returned=pb.Returned(task_ids=ids)))
            self.send(pb.ExecutorMsg(blocked=pb.Blocked(
                task_id=run.spec.task_id, blocked=blocked, cpus=run.spec.resources.cpus)))

    # ----------------------------------------------------------------------- running tasks

    def serve(self) -> None:
        _runtime.node_id = self.node or "local"
        # A fatal error (segfault, abort) kills the stderr forwarder with the process: its traceback
        # goes to a file the node reads when it reports the death.
        fd = os.open(crash_report_path(self.socket_path, self.id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        faulthandler.enable(file=os.fdopen(fd, "w"), all_threads=False)
        self.logs = _LogForwarder(self)
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        _runtime.executor_client_factory = self.make_client
        self.send(pb.ExecutorMsg(hello=self.id))
        threading.Thread(target=self._read_loop, daemon=True, name="node-reader").start()
        threading.Thread(target=self._watch_node, daemon=True, name="node-watch").start()
        while True:
            with self.pending_cond:
                while not self.pending:
                    self.pending_cond.wait()
                if self.actor_loop is not None:  # hand every queued call to the loop at once
                    runs = list(self.pending)
                    self.pending.clear()
                else:
                    runs = [self.pending.popleft()]
            if self.actor_loop is not None:
                self.actor_loop.call_soon_threadsafe(self._start_async_calls, runs)
            elif self.actor_pool is not None and runs[0].spec.method != "__ray_terminate__":
                self.actor_pool.submit(self.run_one, runs[0])
            else:
                self.run_one(runs[0])
            del runs  # a run may carry a large function: not kept while we wait for the next

    def _start_async_calls(self, runs: list[pb.Run]) -> None:
        for run in runs:
            if run.spec.method == "__ray_terminate__":
                self.terminate_after_pending(run)
            else:
                assert self.actor_loop is not None
                task = self.actor_loop.create_task(self.run_one_async(run))
                self.actor_tasks.add(task)
                self.async_calls[run.spec.task_id] = task

    def terminate_after_pending(self, run: pb.Run) -> None:
        """__ray_terminate__ on an async actor: end once the calls before it are done."""
        pending = list(self.actor_tasks)

        async def finish() -> None:
            if pending:
                await asyncio.wait(pending)
            self.report(pb.TaskDone(task_id=run.spec.task_id, attempt=run.spec.attempt), run)

        assert self.actor_loop is not None
        self.actor_loop.create_task(finish())

    def run_one(self, run: pb.Run) -> None:
        self.output_mark = self.logs.lines
        keep: list = []
        started = time.monotonic()
        done = self.execute(run, keep)
        done.duration_s = time.monotonic() - started
        self.report(done, run)
        del keep

    def report(self, done: pb.TaskDone, run: pb.Run) -> None:
        done.executor_pid = self.pid
        usage = store_usage(self.store)
        if usage is not None:
            done.store_usage.CopyFrom(usage)
        if self.actor_pool is None and self.actor_loop is None:
            self.logs.drain()
        # What the task sent the head (puts, submits) must arrive before its result, and refs in
        # the result must stay held until the head has seen the result pin them. The result
        # leaves before the next task starts: if that one kills us, this one is not lost.
        if self.client is not None:
            self.client.transport.flush()
        caller = self.direct_replies.pop(done.task_id, None) if self.direct_replies else None
        # A call's output goes to its driver through the node and head, before its result: a call
        # that printed sends its result the same way.
        quiet = self.logs.lines == self.output_mark or self.actor_pool is not None or self.actor_loop is not None
        if (caller is not None and quiet and done.failure == pb.TaskDone.NONE
                and not any(r.value.contained for r in done.results) and caller.send(done)):
            return  # its caller keeps the values and tells the head
        self.send(pb.ExecutorMsg(done=done))
        if caller is not None:  # refs inside must reach the head after what this task sent it: via the node
            caller.send(pb.TaskDone(task_id=done.task_id, attempt=done.attempt, via_node=True))
        if run.spec.method == "__ray_terminate__":
            self.logs.drain()
            os._exit(0)

    def execute(self, run: pb.Run, keep: list) -> pb.TaskDone:
        spec = run.spec
        task_id = spec.task_id
        done = pb.TaskDone(task_id=task_id, attempt=spec.attempt)
        concurrent = self.actor_pool is not None or self.actor_loop is not None
        becomes_actor = spec.HasField("actor")
        name, job_id = spec.name, spec.job_id
        if not concurrent:
            self.current = run
            # Output is tagged like Ray's: an actor's (its constructor's too) with its class name.
            owner = self.actor_name or (spec.actor.class_name if becomes_actor else name)
            self.log_owner = (owner, job_id)  # kept until the next task: drain() runs after this one
            self.cancel_requested = None
        _runtime.set_current_task(_runtime.TaskContext(
            task_id, job_id, name, spec.resources.cpus, spec.namespace,
            self.actor_id or (spec.actor_id if becomes_actor else b"")))
        saved_env: dict[str, str | None] = {}
        if spec.env_vars:
            saved_env = {k: os.environ.get(k) for k in spec.env_vars}
            os.environ.update(spec.env_vars)
        saved_place = (os.getcwd(), list(sys.path)) if (spec.working_dir or spec.py_modules) else None
        try:
            try:
                if spec.working_dir:
                    working_dir = runtime_env.resolve(spec.working_dir, self.store)
                    os.chdir(working_dir)
                    sys.path.insert(0, working_dir)
                for root in spec.py_modules:
                    sys.path.insert(0, runtime_env.resolve(root, self.store))
                function = self._callable(run)
                args, kwargs = self._load_arguments(run)
                result = function(*args, **kwargs)
                if becomes_actor:
                    self._become_actor(spec, result)
                    if self.direct is not None:
                        done.direct_address, done.direct_token = self.direct
                    return done
                if self.actor_id and task_id in _runtime.cancelled_tasks:
                    done.failure = pb.TaskDone.CANCELLED  # cancelled while it ran (not interrupted)
                    return done
                keep.append(result)
            except KeyboardInterrupt:
                if self.cancel_requested == task_id:
                    done.failure = pb.TaskDone.CANCELLED
                    return done
                raise
            except SystemExit as exc:
                self._exit(spec, exc)
            except BaseException as exc:  # noqa: BLE001 - the task's error goes back to the caller
                self._fail(done, spec, exc)
                return done
            try:
                self._pack_results(done, spec, result, keep)
            except SystemExit as exc:  # raised by a generator while it was being driven
                self._exit(spec, exc)
            return done
        finally:
            if not becomes_actor:  # an actor keeps its runtime_env for its life
                for k, v in saved_env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                if saved_place is not None:
                    os.chdir(saved_place[0])
                    sys.path[:] = saved_place[1]
            if not concurrent:
                self.current = None
            _runtime.set_current_task(None)
            _runtime.cancelled_tasks.discard(task_id)

    async def run_one_async(self, run: pb.Run) -> None:
        """A call on an async actor: runs on the actor's event loop, up to max_concurrency at once."""
        spec = run.spec
        done = pb.TaskDone(task_id=spec.task_id, attempt=spec.attempt)
        assert self.actor_semaphore is not None
        async with self.actor_semaphore:
            started = time.monotonic()
            _runtime.set_current_task(_runtime.TaskContext(
                spec.task_id, spec.job_id, spec.name, spec.resources.cpus, spec.namespace, self.actor_id))
            try:
                function = self._callable(run)
                args, kwargs = self._load_arguments(run)
                result = function(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                driven = bool(spec.generator) and hasattr(result, "__anext__")
                if driven:
                    result = await self._run_async_generator(spec, result)
                keep = [result]
                self._pack_results(done, spec, result, keep, driven)
            except asyncio.CancelledError:
                done.failure = pb.TaskDone.CANCELLED  # ray.cancel: the caller gets TaskCancelledError
            except SystemExit as exc:
                self._exit(spec, exc)
            except BaseException as exc:  # noqa: BLE001
                self._fail(done, spec, exc)
            finally:
                _runtime.set_current_task(None)
                self.async_calls.pop(spec.task_id, None)
                _runtime.cancelled_tasks.discard(spec.task_id)
            done.duration_s = time.monotonic() - started
        self.report(done, run)  # a short blocking write on the Unix socket, from the loop itself
        self.actor_tasks.discard(asyncio.current_task())

    def _pack_results(self, done: pb.TaskDone, spec: pb.TaskSpec, result: Any, keep: list | None = None,
                      driven: bool = False) -> None:
        """Store the task's results in ``done``; ``driven``: a generator task's items were already sent."""
        if spec.generator and not driven:
            try:
                result = self._run_generator(spec, result)
                if keep is not None:
                    keep.append(result)  # refs inside stay held until the head has the result
            except SystemExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - the generator raised part-way
                if isinstance(exc, KeyboardInterrupt) and self.cancel_requested == spec.task_id:
                    done.failure = pb.TaskDone.CANCELLED  # ray.cancel while it was streaming
                    return
                self._fail(done, spec, exc)
                return
        failed: BaseException | None = None
        if len(spec.return_ids) > 1 and isinstance(result, types.GeneratorType):
            # Ray's rule for a generator with num_returns=N: the values it yielded are kept; the
            # refs it did not fill (it raised, or yielded too few) hold the error.
            results, failed = self._drain_fixed(result, len(spec.return_ids), spec)
        else:
            try:
                results = self._split(result, len(spec.return_ids), spec)
            except ValueError as exc:
                self._fail(done, spec, exc)
                return
        inline_budget = config.MAX_BATCH_BYTES  # many returns: the rest go to the store, not one huge message
        for rid, value in zip(spec.return_ids, results):
            try:
                ser = serialize(value)
            except Exception as exc:  # noqa: BLE001
                del done.results[:]
                self._fail(done, spec, TypeError(f"could not serialize the return value of {spec.name}: {exc}"))
                return
            try:
                value = pack_value(ser, rid.hex(), self.store,
                                   config.INLINE_THRESHOLD if ser.size < inline_budget else 0)
                inline_budget -= len(value.inline)
            except (OSError, ObjectStoreFullError) as exc:
                for written in done.results:
                    if written.value.WhichOneof("where") == "key":
                        self.store.delete(written.value.key)
                del done.results[:]
                self._fail(done, spec, ObjectStoreFullError(
                    f"could not store the result of {spec.name} ({ser.size} bytes): {exc}"))
                done.retryable = False
                return
            done.results.add(id=rid, value=value)
        if failed is not None:
            error = pb.TaskDone()
            self._fail(error, spec, failed)
            for rid in spec.return_ids[len(results):]:
                done.results.add(id=rid, value=error.results[0].value)
            done.retryable = error.retryable

    @staticmethod
    def _drain_fixed(gen: Any, n: int, spec: pb.TaskSpec) -> tuple[list, BaseException | None]:
        values: list = []
        try:
            for value in gen:
                if len(values) == n:  # as in Ray: the N refs keep their values, the surplus is reported
                    gen.close()
                    print(f"{spec.name} has num_returns={n} but its generator yielded more than {n} values; "
                          "the extra ones are dropped", file=sys.stderr)
                    return values, None
                values.append(value)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the generator's own error, kept for the rest
            return values, exc
        if len(values) < n:
            return values, ValueError(
                f"{spec.name} has num_returns={n} but its generator yielded only {len(values)} values")
        return values, None

    def _send_item(self, spec: pb.TaskSpec, index: int, value: Any) -> None:
        from .._ids import item_id

        oid = item_id(spec.task_id, index)
        packed = pack_value(serialize(value), oid.hex(), self.store, config.INLINE_THRESHOLD)
        if self.client is not None:
            self.client.transport.flush()  # refs inside the item are known to the head first
        self.send(pb.ExecutorMsg(stream_item=pb.Object(id=oid, value=packed)))

    async def _run_async_generator(self, spec: pb.TaskSpec, agen: Any) -> Any:
        """An async generator method of an async actor: stream its items (or, for "dynamic",
        collect them)."""
        if spec.generator == "dynamic":
            values: list = []
            failed: BaseException | None = None
            try:
                async for value in agen:
                    values.append(value)
            except (SystemExit, asyncio.CancelledError):
                raise
            except BaseException as exc:  # noqa: BLE001 - replayed below: it goes in the last ref
                failed = exc

            def replay() -> Any:
                yield from values
                if failed is not None:
                    raise failed

            return self._run_dynamic(spec, replay())
        count = 0
        async for value in agen:
            if count >= spec.stream_skip:  # a retry: the consumer has the earlier ones
                self._send_item(spec, count, value)
            count += 1
        return count

    def _run_generator(self, spec: pb.TaskSpec, result: Any) -> Any:
        """Drive a generator task. Streaming: report each item as it is yielded, return the count.
        Dynamic: store each item, return one DynamicObjectRefGenerator of their refs."""
        if not hasattr(result, "__next__"):
            raise TypeError(f"{spec.name} has num_returns={spec.generator!r} but returned a "
                            f"{type(result).__name__}, not a generator")
        if spec.generator == "dynamic":
            return self._run_dynamic(spec, result)
        count = 0
        for value in result:
            if count >= spec.stream_skip:  # a retry: the consumer has the earlier ones
                self._send_item(spec, count, value)
            count += 1
        return count

    def _run_dynamic(self, spec: pb.TaskSpec, gen: Any) -> DynamicObjectRefGenerator:
        """Ray's rule for ``num_returns="dynamic"``: if the generator raises, the refs of what it
        yielded keep their values and one last ref holds the error."""
        from .. import api

        refs = []
        try:
            for value in gen:
                refs.append(api.put(value))
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - the error goes in the last ref
            error = pb.TaskDone()
            self._fail(error, spec, exc)
            refs.append(self.make_client().put_error(error.results[0].value))
        return DynamicObjectRefGenerator(refs)

    def _callable(self, run: pb.Run):
        spec = run.spec
        if spec.method:
            if self.actor_instance is None:
                raise RuntimeError(f"{spec.name}: this process holds no actor")
            if spec.method == "__ray_terminate__":
                return lambda: None
            return getattr(self.actor_instance, spec.method)
        return self._function(run)

    def _become_actor(self, spec: pb.TaskSpec, instance: Any) -> None:
        """The creation task ran: this process now serves that actor's calls."""
        options = spec.actor
        self.actor_instance = instance
        self.actor_id = spec.actor_id
        _runtime.actor_handle_meta = options.handle_meta
        _runtime.actor_restarted = spec.attempt > 0
        self.actor_name = options.class_name
        self.log_owner = (options.class_name, spec.job_id)
        if options.is_async:
            self.actor_loop = asyncio.new_event_loop()
            self.actor_semaphore = asyncio.Semaphore(options.max_concurrency or 1000)
            threading.Thread(target=self.actor_loop.run_forever, daemon=True, name="actor-loop").start()
        elif options.max_concurrency > 1:
            self.actor_pool = concurrent.futures.ThreadPoolExecutor(
                options.max_concurrency, thread_name_prefix="actor")
        if config.DIRECT_CALLS:
            self._listen_direct()

    # ----------------------------------------------------------------- callers -> actor, directly

    def _listen_direct(self) -> None:
        """Take calls straight from callers on this machine: a Unix socket beside the node's (in its
        owner-only directory), and a token each caller must send first."""
        import secrets

        path = os.path.join(os.path.dirname(self.socket_path), ACTOR_SOCKET.format(self.id))
        try:
            os.unlink(path)  # a restarted actor's earlier process may have left it
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            listener.listen(16)
        except OSError:  # e.g. a path over the length limit: calls come through the head only
            listener.close()
            return
        token = secrets.token_urlsafe(24)
        self.direct = (path, token)
        threading.Thread(target=self._accept_direct, args=(listener, token), daemon=True,
                         name="direct-accept").start()

    def _accept_direct(self, listener: socket.socket, token: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # e.g. out of file descriptors for a moment
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve_direct, args=(conn, token), daemon=True, name="direct-caller").start()

    def _serve_direct(self, conn: socket.socket, token: str) -> None:
        caller = _DirectCaller(conn)
        frames = iter_frames(conn, config.MAX_MESSAGE_BYTES)
        try:
            if not hmac.compare_digest(next(frames, b""), token.encode()):
                return
            for frame in frames:
                run = pb.Run.FromString(frame)
                with self.pending_cond:
                    self.direct_replies[run.spec.task_id] = caller
                    self.pending.append(run)
                    self.pending_cond.notify()
        except FrameTooLarge:
            return
        finally:
            caller.closed = True
            conn.close()

    def _function(self, run: pb.Run):
        fid = run.spec.function_id
        function = self.functions.get(fid)
        if function is None:
            message = self.function_msgs.get(fid)
            if message is None:
                raise RaySystemError(f"the function of {run.spec.name} was dropped from this worker's cache")
            try:
                function = cloudpickle.loads(message.pickled)
            except Exception as exc:
                raise RaySystemError(
                    f"could not load {message.name} in the worker: {type(exc).__name__}: {exc} (the worker "
                    "needs every module it uses by reference: install it there, or define it in the script)"
                ) from exc
            del self.function_msgs[fid]
            if message.source_file:
                _restore_filenames(function, message.source_file)
            self.functions[fid] = function
        return function

    def _load_arguments(self, run: pb.Run) -> tuple[tuple, dict]:
        try:
            return self._arguments(run)
        except Exception as exc:
            raise RaySystemError(
                f"could not deserialize the arguments of {run.spec.name} in the worker: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _arguments(self, run: pb.Run) -> tuple[tuple, dict]:
        args, kwargs = load_value(run.spec.args, self.store)
        if not run.spec.deps:  # no ObjectRef among the arguments: no placeholder to fill in
            return args, kwargs
        from ..remote_function import _Dep

        values = [load_value(obj.value, self.store) for obj in run.deps]
        by_id = dict(zip((obj.id for obj in run.deps), values))
        resolved = [by_id[d] for d in run.spec.deps]
        args = tuple(resolved[a.index] if isinstance(a, _Dep) else a for a in args)
        kwargs = {k: resolved[v.index] if isinstance(v, _Dep) else v for k, v in kwargs.items()}
        return args, kwargs

    @staticmethod
    def _split(result: Any, n: int, spec: pb.TaskSpec) -> list:
        if n == 1:
            return [result]
        try:
            values = list(result)
        except TypeError:
            raise ValueError(f"{spec.name} has num_returns={n} but returned a {type(result).__name__}") from None
        if len(values) != n:
            raise ValueError(f"{spec.name} has num_returns={n} but returned {len(values)} values")
        return values

    def _exit(self, spec: pb.TaskSpec, exc: SystemExit) -> NoReturn:
        """``sys.exit()`` or ``exit_actor()`` in user code ends this worker process, as in Ray.

        A task's exit is a worker death (retried while ``max_retries`` allows, then
        ``WorkerCrashedError``); an actor's ``sys.exit()`` is a crash (``max_restarts`` applies).
        ``exit_actor()`` is an intended exit: the call gets ``ActorDiedError``, the head is told
        not to restart the actor, and it stops this process.
        """
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        actor_id = self.actor_id or (spec.actor_id if spec.HasField("actor") else b"")
        if actor_id and isinstance(exc, AsyncioActorExit):
            client = self.make_client()
            client.kill_self(actor_id, "it called exit_actor() (an intended exit: it is not restarted)")
            done = pb.TaskDone(task_id=spec.task_id, attempt=spec.attempt)
            value = error_value(ActorDiedError(
                actor_id.hex(), "The actor is dead because it called exit_actor() (an intended exit: "
                                "it is not restarted)."))
            for rid in spec.return_ids:
                done.results.add(id=rid, value=value)
            self.report(done, spec_run(spec))
            self.logs.drain()
            time.sleep(60)  # the head stops this process; if it can't, leave anyway
            os._exit(0)
        if exc.code not in (None, 0) and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        self.logs.drain()
        if self.client is not None:
            self.client.transport.flush()
        os._exit(code)

    def _fail(self, done: pb.TaskDone, spec: pb.TaskSpec, exc: BaseException) -> None:
        frames = exc.__traceback__.tb_next if exc.__traceback__ else None  # without this function's own frame
        tb = "".join(traceback.format_exception(type(exc), exc, frames))
        if isinstance(exc, RayTaskError):  # a failed nested task: keep its cause and its traceback
            cause = exc.cause
        else:
            cause = exc
        error = RayTaskError(spec.name, tb, cause, os.getpid(), self.node)
        try:
            value = error_value(error)
        except Exception:  # noqa: BLE001 - the exception itself can't be pickled: keep its text
            value = error_value(RayTaskError(spec.name, tb, None, os.getpid(), self.node))
        for rid in spec.return_ids:
            done.results.add(id=rid, value=value)
        if spec.retry_exceptions:
            try:
                allowed = pickle.loads(spec.retry_exceptions)
            except Exception:  # noqa: BLE001 - a class this worker can't rebuild: not retried
                allowed = ()
            done.retryable = allowed is True or (isinstance(allowed, tuple) and isinstance(cause, allowed))




def spec_run(spec: pb.TaskSpec) -> pb.Run:
    return pb.Run(spec=spec)


def _restore_filenames(obj: Any, filename: str) -> None:
    """A function's code, or every method's of a class, gets its source file name back."""
    if isinstance(obj, type):
        for member in vars(obj).values():
            member = getattr(member, "__func__", member)  # staticmethod / classmethod
            if isinstance(member, types.FunctionType):
                member.__code__ = _with_filename(member.__code__, filename)
    elif isinstance(obj, types.FunctionType):
        obj.__code__ = _with_filename(obj.__code__, filename)


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    """Give code pickled by value its real file name back, so tracebacks point at the source."""
    if code.co_filename != "<dynamic-code>":
        return code
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


class _DirectCaller:
    """A caller's connection to this actor: replies are written from whichever thread ran the call."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.closed = False

    def send(self, done: pb.TaskDone) -> bool:
        """False if the caller is gone (the call's end then goes to the head through the node)."""
        if self.closed:
            return False
        data = encode(done)
        try:
            with self.lock:
                self.conn.sendall(data)
        except OSError:
            self.closed = True
            return False
        return True


class _RelayTransport:
    """The executor's session with the head, tunnelled through the node socket."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.client: Any = None

    def start(self, client) -> None:
        self.client = client
        self.executor.client = client  # replies (the welcome first) are routed to it from now on
        threading.Thread(target=self._sender, daemon=True, name="session-sender").start()

    def wake(self) -> None:
        self.event.set()

    wake_soon = send_now = wake

    def close(self) -> None:
        pass

    def flush(self) -> None:
        with self.lock:
            ops = self.client.take_outbox()
            if ops:
                for message in config.batch_messages(pb.ClientMsg, ops):
                    self.executor.send(pb.ExecutorMsg(up=message))

    def _sender(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            self.flush()


class _LogForwarder:
    """Replace fds 1 and 2 with pipes; forward whole lines to the node, tagged with the running task."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.lines = 0  # batches of output lines forwarded so far
        self.pipes = []
        for stream_no in (1, 2):
            r, w = os.pipe()
            os.dup2(w, stream_no)
            os.close(w)
            lock = threading.Lock()
            state = {"partial": b""}
            self.pipes.append((stream_no, r, lock, state))
            threading.Thread(target=self._reader, args=(stream_no, r, lock, state), daemon=True).start()
        self._unread = select.poll()  # bytes the tasks wrote that the readers have not taken yet
        for _stream_no, r, _lock, _state in self.pipes:
            self._unread.register(r, select.POLLIN)
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(line_buffering=True)

    def _reader(self, stream_no: int, r: int, lock: threading.Lock, state: dict) -> None:
        # Bytes leave the pipe only under the lock, so drain() can tell when all were forwarded.
        poller = select.poll()
        poller.register(r, select.POLLIN)
        while True:
            poller.poll()
            with lock:
                data = os.read(r, 65536)
                if not data:
                    return
                data = state["partial"] + data
                cut = data.rfind(b"\n")
                if cut < 0:
                    state["partial"] = data
                    continue
                state["partial"] = data[cut + 1 :]
                self._emit(stream_no, data[: cut + 1])

    def _emit(self, stream_no: int, data: bytes) -> None:
        self.lines += 1
        name, job = self.executor.log_owner
        text = data.decode("utf-8", errors="replace")
        self._send_log(stream_no, name, job, text)

    def _send_log(self, stream_no: int, name: str, job: str, text: str) -> None:
        try:
            self._send_log_msg(stream_no, name, job, text)
        except OSError:  # the node is gone: nothing to report to
            os._exit(1)

    def _send_log_msg(self, stream_no: int, name: str, job: str, text: str) -> None:
        self.executor.send(pb.ExecutorMsg(log=pb.Log(
            job_id=job, task_name=name, pid=os.getpid(), node=self.executor.node, stream=stream_no,
            text=text.rstrip("\n"),
        )))

    def drain(self) -> None:
        """Deliver everything the finished task wrote before its result leaves."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (ValueError, OSError):
            pass
        # One system call when the task wrote nothing (after every task; each one also lets the
        # reader thread take the GIL). Once both pipes are empty, what the readers took from them
        # is forwarded when they let go of their locks.
        deadline = time.monotonic() + 2.0
        while self._unread.poll(0) and time.monotonic() < deadline:
            time.sleep(0.0001)
        for stream_no, _r, lock, state in self.pipes:
            with lock:
                if state["partial"]:
                    data, state["partial"] = state["partial"], b""
                    self._emit(stream_no, data)


def main() -> None:
    from .._memory import return_large_blocks

    return_large_blocks()
    if os.environ.get("STARBURST_RAY_ALIAS") == "1":  # a Ray script run by `starburst run`
        from ..compat import install_ray_alias

        install_ray_alias()
    parser = argparse.ArgumentParser(prog="python -m starburst.node.executor")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--node", default="")
    args = parser.parse_args()
    try:
        Executor(args).serve()
    except BaseException as exc:
        # The stderr forwarder dies with this process: leave the traceback (the user's frames, not
        # the executor's) where the node reads it.
        ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith(ours) and not f.filename.startswith("<frozen")]
        try:
            with open(crash_report_path(args.socket, args.id), "a") as f:
                f.write("Uncaught exception in the worker process, traceback (most recent call last):\n"
                        + "".join(traceback.format_list(frames))
                        + "".join(traceback.format_exception_only(type(exc), exc)))
        except OSError:
            pass
        raise


if __name__ == "__main__":
    main()
