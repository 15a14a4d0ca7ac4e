"""The node process: serves one head's Work stream and runs its tasks on a pool of executors."""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import contextlib
import os
import shutil
import signal
import sys
import subprocess
import threading
import time

import grpc

from .. import config
from .._memory import trim as trim_memory
from .._proto import starburst_pb2 as pb
from .._proto import starburst_pb2_grpc as pb_grpc
from .._version import runtime_versions
from ..framing import ACTOR_SOCKET, LINK_SOCKET, FramedStream, encode, read_frames, read_token
from .crash_report import read_crash_report
from .launch import Early, pool_size, spawn_executor
from .pool import Pool, Slot

log = logging.getLogger("starburst.node")

#: A state report (``report``) waits at most this long for other operations to travel with: a
#: lone short task then costs the head one message from the node, not two.
REPORT_DELAY_S = config.WINDOW_S


class Executor(Slot):
    """The node's handle on one executor process (its bookkeeping is the pool's ``Slot``)."""

    def __init__(self, executor_id: int) -> None:
        super().__init__(executor_id)
        self.proc: subprocess.Popen | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.functions: set[bytes] = set()
        self.outbuf: list[bytes] = []
        self.exit_code: int | None = None
        self.eof = False
        self.kill_reason: str | None = None  # set when the node kills it on purpose
        self.has_session = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.crash_report: list[str] = []  # a fatal error's report (faulthandler), read at its death

    def last_words(self) -> str:
        """The last lines it wrote to stderr and its fatal-error report, for the error that reports
        its death ('' if none)."""
        lines = list(self.stderr_tail)
        lines += [line for line in self.crash_report if line.strip()][:STDERR_TAIL_LINES]
        if not lines:
            return ""
        return "; its last lines on stderr:\n" + "\n".join("    " + line for line in lines)

    def send(self, msg: pb.NodeToExecutorMsg) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode(msg))

    def queue_frame(self, msg: pb.NodeToExecutorMsg) -> None:
        """Like send, but held until flush(): one write (and one wake-up) for several tasks."""
        self.outbuf.append(encode(msg))

    def flush(self) -> None:
        if self.outbuf and self.writer is not None:
            data, self.outbuf = b"".join(self.outbuf), []
            if self.writer is not None and not self.writer.is_closing():
                self.writer.write(data)


class NodeServer(pb_grpc.NodeServicer):
    def __init__(self, args: argparse.Namespace, early: Early) -> None:
        self.args = args
        self.node_id = args.node_id
        self.num_cpus = args.num_cpus
        self.pool_size = pool_size(self.num_cpus)
        self.max_executors = self.pool_size * 4 + 16
        # The local cluster's node is alone: work it handed back could only come back to it.
        self.pool = Pool(self.num_cpus, self.pool_size, self.max_executors, self, hand_back=bool(args.advertise))
        self.functions: dict[bytes, pb.Function] = {}
        self.executors: dict[int, Executor] = {}
        self.actors: dict[bytes, Executor] = {}  # actor id -> its dedicated executor
        self.next_id = 0
        self.early = early
        self.socket_dir = early.socket_dir
        self.socket_path = early.socket_path
        self.out: list[pb.NodeToHeadOp] = []
        #: State reports not sent yet, the latest of each kind; they go with the next write.
        self.reports: dict[str, pb.NodeToHeadOp] = {}
        self._report_timer: asyncio.TimerHandle | None = None
        self.out_event = asyncio.Event()
        self.head_connected = False
        self.head_lost_at_start = False
        self.lease_timer: asyncio.Future | None = None
        self._stuck_timer: asyncio.TimerHandle | None = None
        self._stuck_task: asyncio.Future | None = None
        self._trim = False  # functions were dropped: give freed memory back after the batch
        self.stop = asyncio.Event()
        self.address = ""
        self.loop = asyncio.get_running_loop()

    # ----------------------------------------------------------------------- head stream

    def to_head(self, op: pb.NodeToHeadOp) -> None:
        self.out.append(op)
        self.out_event.set()

    def report(self, op: pb.NodeToHeadOp) -> None:
        self.reports[op.WhichOneof("op")] = op
        if self._report_timer is None:
            self._report_timer = self.loop.call_later(REPORT_DELAY_S, self.out_event.set)

    def _take_out(self) -> list[pb.NodeToHeadOp]:
        """The operations to write now: those queued, then the pending reports."""
        ops, self.out = self.out, []
        if self.reports:
            ops.extend(self.reports.values())
            self.reports.clear()
            if self._report_timer is not None:
                self._report_timer.cancel()
                self._report_timer = None
        return ops

    async def Work(self, request_iterator, context):  # noqa: N802 - gRPC method name
        identity = self.args.tls
        if identity is not None and not _called_by_head(context, identity.cluster_id):
            # The handshake already required a certificate from the cluster's CA; a node's own
            # (server-only) certificate can't get here, but be explicit about who may call.
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only this cluster's head may call a node")
        if self.head_connected:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node already serves a head")
        self.head_connected = True
        if self.lease_timer is not None:
            self.lease_timer.cancel()
            self.lease_timer = None
        stream_done = asyncio.Event()
        reader: asyncio.Future | None = None

        async def read() -> None:
            try:
                while True:
                    msg = await context.read()
                    if msg is grpc.aio.EOF:
                        break
                    for op in msg.ops:
                        self._on_head_op(op)
                    if self._trim:
                        self._trim = False
                        trim_memory()
                    self._pump()
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            except Exception:
                log.exception("node failed handling the head's stream")
            finally:
                stream_done.set()
                self.out_event.set()

        # From here on, however the stream ends (a head that dies while we greet it cancels this
        # coroutine at the first write), the head is lost: the lease runs again.
        try:
            hello = pb.NodeHello(
                node_id=self.node_id, store_url=self.args.store, pid=os.getpid(), address=self.address,
                versions=runtime_versions(),
            )
            hello.resources.cpus = self.num_cpus
            hello.resources.memory = float(_memory_to_give())
            await context.write(pb.NodeToHead(ops=[pb.NodeToHeadOp(hello=hello)]))
            reader = asyncio.ensure_future(read())
            last_write = 0.0
            while not self.stop.is_set() and not stream_done.is_set():
                await self.out_event.wait()
                if self.pool.queue or self.pool.running() > 1:  # more results are coming: send them together
                    await asyncio.sleep(config.batch_delay(last_write))
                self.out_event.clear()
                if self.out or self.reports:
                    ops = self._take_out()
                    for message in config.batch_messages(pb.NodeToHead, ops):
                        await context.write(message)
                    last_write = time.monotonic()
        finally:
            if reader is not None:
                reader.cancel()
            self._head_lost()

    async def _on_head_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A local head's Work stream over our link socket; its first frame is the node's token."""
        try:
            if not await read_token(reader, self.args.token or "", LINK_HELLO_TIMEOUT_S):
                log.warning("refused a link without this node's token")
                return
            await self.Work(None, FramedStream(reader, writer, pb.HeadToNode, answer_pings=True))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _head_lost(self) -> None:
        """The head's stream ended. A local node stops with its head. A remote node waits up to its
        lease for a head to dial it again (a dropped connection), then stops: a closed laptop never
        leaves a bill running. The work of the lost stream is dropped; the head retries it."""
        lease = self.args.reconnect_lease
        if self.stop.is_set() or lease <= 0 or self.pool.draining:
            self.stop.set()
            return
        log.warning("lost the head; waiting up to %s s for it to reconnect", lease)
        self.head_connected = False
        self.pool.clear()
        for executor in list(self.executors.values()):
            if executor.runs and executor.proc is not None and executor.proc.poll() is None:
                executor.kill_reason = "head lost"
                executor.proc.kill()
        self._take_out()  # dropped with the stream
        self._start_lease(lease)

    def _on_head_op(self, op: pb.HeadToNodeOp) -> None:
        kind = op.WhichOneof("op")
        if kind == "run":
            run = op.run
            if run.HasField("function"):
                self.functions[run.function.id] = run.function
            if run.spec.actor_id:
                self._actor_run(run)
            else:
                self.pool.submit(run)
        elif kind == "relay":
            executor = self.executors.get(op.relay.executor)
            if executor is not None:
                executor.send(pb.NodeToExecutorMsg(down=op.relay.down))
        elif kind == "cancel":
            self._cancel(op.cancel.task_id, op.cancel.force, op.cancel.actor_id)
        elif kind == "shutdown":
            self.stop.set()
            self.out_event.set()
        elif kind == "ping":
            self.to_head(pb.NodeToHeadOp(pong=op.ping))
        elif kind == "recall":
            self.pool.head_recall(op.recall.task_ids)
        elif kind == "forget_function":  # no task of it is here any more (the head counts them)
            self.functions.pop(op.forget_function, None)
            for executor in self.executors.values():
                if op.forget_function in executor.functions:
                    executor.functions.discard(op.forget_function)
                    executor.send(pb.NodeToExecutorMsg(forget_function=op.forget_function))
            self._trim = True  # once the whole batch is applied: the head drops functions in batches
        elif kind == "kill_actor":
            executor = self.actors.get(op.kill_actor)
            if executor is not None and executor.proc is not None and executor.proc.poll() is None:
                executor.kill_reason = "killed"
                executor.proc.kill()

    def _actor_run(self, run: pb.Run) -> None:
        """Actors get a process of their own; their calls go straight to it, in order."""
        spec = run.spec
        if spec.HasField("actor"):  # creation: start the actor's process
            executor = self._spawn(actor_id=spec.actor_id)
            if executor is None:
                self._report(pb.TaskDone(task_id=spec.task_id, failure=pb.TaskDone.WORKER_DIED,
                                         detail="could not start a process for the actor"))
                self.to_head(pb.NodeToHeadOp(actor_died=pb.ActorDied(
                    actor_id=spec.actor_id, reason="could not start a process for the actor")))
                return
            self.actors[spec.actor_id] = executor
            self.pool.actor_started(executor, spec.resources.cpus)  # held for the actor's life
        else:
            executor = self.actors.get(spec.actor_id)
            if executor is None:
                self._report(pb.TaskDone(task_id=spec.task_id, failure=pb.TaskDone.WORKER_DIED,
                                         detail="the actor is not running on this node"))
                return
        executor.runs.append(run)
        self.run(executor, run)
        executor.flush()

    def _cancel(self, task_id: bytes, force: bool, actor_id: bytes = b"") -> None:
        if self.pool.drop_queued(task_id):
            self._report(pb.TaskDone(task_id=task_id, failure=pb.TaskDone.CANCELLED))
            return
        for executor in self.executors.values():
            for i, run in enumerate(executor.runs):
                if run.spec.task_id != task_id:
                    continue
                if force and i == 0:
                    executor.kill_reason = "cancelled"
                    if executor.proc is not None and executor.proc.poll() is None:
                        executor.proc.kill()
                else:  # the executor drops it from its queue, or interrupts it if it already started
                    executor.send(pb.NodeToExecutorMsg(cancel=task_id))
                return
        actor = self.actors.get(actor_id) if actor_id else None
        if actor is not None:  # a call its caller sent straight to the actor's process
            actor.send(pb.NodeToExecutorMsg(cancel=task_id))

    def _report(self, done: pb.TaskDone) -> None:
        self.to_head(pb.NodeToHeadOp(done=done))

    # ----------------------------------------------------------------------- executors

    def _pump(self) -> None:
        try:
            self.pool.pump()
        finally:
            for executor in self.executors.values():
                executor.flush()
            self._arm_stuck_timer()

    def _arm_stuck_timer(self) -> None:
        """Wake when the unstarted work here would count as stuck (``Pool.stuck_at``, monotonic like
        the loop's clock): it then goes back to the head without waiting for a recall."""
        due = self.pool.stuck_at()
        timer = self._stuck_timer
        if timer is not None and (due is None or timer.when() != due):
            timer.cancel()
            timer = self._stuck_timer = None
        if due is not None and timer is None:
            self._stuck_timer = self.loop.call_at(due, self._stuck_check)

    def _stuck_check(self) -> None:
        self._stuck_timer = None
        self._stuck_task = asyncio.ensure_future(self._hand_back_stuck())  # held: a task is weakly referenced

    async def _hand_back_stuck(self) -> None:
        # Read what the executors have written first: a task that finished while this process was
        # not scheduled (a busy machine) is progress, not a stuck node.
        for _ in range(3):
            await asyncio.sleep(0)
        if self.pool.hand_back_stuck():
            log.debug("handed back unstarted work stuck behind a long-running task")
        self._pump()

    # PoolSink: what the pool asks of the node

    def run(self, slot: Slot, run: pb.Run) -> None:
        executor = self.executors[slot.id]
        if not run.spec.function_id:  # an actor call: the actor's process has its class already
            pass
        elif run.spec.function_id not in executor.functions:
            executor.functions.add(run.spec.function_id)
            if not run.HasField("function"):
                run.function.CopyFrom(self.functions[run.spec.function_id])
        elif run.HasField("function"):
            run.ClearField("function")
        executor.queue_frame(pb.NodeToExecutorMsg(run=run))

    def recall(self, slot: Slot, task_ids: list[bytes]) -> None:
        # Behind the runs queued in the same pass: the executor sees a run before its recall.
        self.executors[slot.id].queue_frame(pb.NodeToExecutorMsg(recall=pb.Returned(task_ids=task_ids)))

    def spawn(self) -> None:
        self._spawn()

    def _spawn(self, proc: subprocess.Popen | None = None, actor_id: bytes = b"") -> Executor | None:
        executor = Executor(self.next_id)
        executor.actor_id = actor_id
        self.next_id += 1
        self.executors[executor.id] = executor
        self.pool.add(executor)
        try:
            executor.proc = proc or spawn_executor(executor.id, self.socket_path, self.args)
        except OSError:
            log.exception("could not start an executor")
            self.pool.spawn_failed(executor)
            del self.executors[executor.id]
            return None
        threading.Thread(target=self._wait_executor, args=(executor,), daemon=True).start()
        return executor

    def _wait_executor(self, executor: Executor) -> None:
        assert executor.proc is not None
        code = executor.proc.wait()
        try:
            self.loop.call_soon_threadsafe(self._executor_exited, executor, code)
        except RuntimeError:  # the loop is closed: the node is exiting anyway
            pass

    def _executor_exited(self, executor: Executor, code: int) -> None:
        executor.exit_code = code
        if executor.writer is None:  # died before connecting
            self.pool.exited_unconnected(executor)
            self._executor_gone(executor, code)
        elif executor.eof:
            self._executor_gone(executor, code)
        # else: results it wrote before dying may still be unread; the socket's EOF finishes this.

    def _executor_eof(self, executor: Executor) -> None:
        executor.eof = True
        if executor.exit_code is not None:
            self._executor_gone(executor, executor.exit_code)

    def _report_executors(self) -> None:
        alive = sum(1 for e in self.executors.values() if e.writer is not None and not e.actor_id)
        self.to_head(pb.NodeToHeadOp(executors=alive))

    def _executor_gone(self, executor: Executor, code: int) -> None:
        if self.executors.get(executor.id) is not executor:
            return
        executor.crash_report = read_crash_report(self.socket_path, executor.id)
        self.executors.pop(executor.id, None)
        self._report_executors()
        if executor.has_session:
            self.to_head(pb.NodeToHeadOp(relay=pb.Relay(executor=executor.id, closed=True)))
        if executor.actor_id:
            self.pool.gone(executor)
            self._actor_gone(executor, code)
            return
        # Tasks queued behind the one that ran never started: they are placed again.
        run = self.pool.gone(executor)
        if run is not None:
            if executor.kill_reason == "cancelled":
                self._report(pb.TaskDone(task_id=run.spec.task_id, failure=pb.TaskDone.CANCELLED))
            else:
                self._report(pb.TaskDone(
                    task_id=run.spec.task_id, failure=pb.TaskDone.WORKER_DIED, attempt=run.spec.attempt,
                    detail=f"its worker process (pid {executor.proc.pid if executor.proc else '?'}) "
                           f"died with {_describe_exit(code)}{executor.last_words()}",
                ))
        if not self.stop.is_set():
            while self.pool.pool_count() < self.pool_size:
                self._spawn()
            self._pump()

    def _actor_gone(self, executor: Executor, code: int) -> None:
        self.actors.pop(executor.actor_id, None)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.socket_dir, ACTOR_SOCKET.format(executor.id)))
        how = {"killed": "it was killed"}.get(
            executor.kill_reason or "", f"its process died with {_describe_exit(code)}{executor.last_words()}")
        for run in executor.runs:  # calls in flight: the head retries them or fails them
            self._report(pb.TaskDone(task_id=run.spec.task_id, failure=pb.TaskDone.WORKER_DIED,
                                     attempt=run.spec.attempt, detail=how))
        executor.runs.clear()
        self.to_head(pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=executor.actor_id, reason=how)))

    async def _on_executor_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        executor: Executor | None = None
        try:
            async for frame in read_frames(reader):
                msg = pb.ExecutorMsg.FromString(frame)
                if executor is None:
                    executor = self.executors.get(msg.hello)
                    if executor is None:
                        return
                    executor.writer = writer
                    self.pool.connected(executor)
                    executor.flush()  # an actor's creation (and calls) may be waiting already
                    self._report_executors()
                    self._pump()
                    continue
                self._on_executor_msg(executor, msg)
        finally:
            writer.close()
            if executor is not None:
                self._executor_eof(executor)

    def _on_executor_msg(self, executor: Executor, msg: pb.ExecutorMsg) -> None:
        kind = msg.WhichOneof("op")
        if kind == "done":
            self._done(executor, msg.done)
        elif kind == "log":
            if msg.log.stream == 2:
                executor.stderr_tail.extend(msg.log.text.splitlines())
            self.to_head(pb.NodeToHeadOp(log=msg.log))
        elif kind == "stream_item":
            self.to_head(pb.NodeToHeadOp(stream_item=msg.stream_item))
        elif kind == "up":
            executor.has_session = True
            self.to_head(pb.NodeToHeadOp(relay=pb.Relay(executor=executor.id, up=msg.up)))
        elif kind == "returned":
            self.pool.returned(executor, msg.returned.task_ids)
            self._pump()
        elif kind == "blocked":
            self.pool.blocked(executor, msg.blocked.blocked)
            self._pump()

    def _done(self, executor: Executor, done: pb.TaskDone) -> None:
        self.pool.done(executor, done)
        self._report(done)
        if executor.actor_id:
            return
        self._retire_extra(executor)
        self._pump()

    def _retire_extra(self, executor: Executor) -> None:
        """Executors started while others were blocked go away once they are not needed."""
        if (self.pool.pool_count() > self.pool_size and not self.pool.queue and not executor.runs
                and not executor.actor_id
                and executor.writer is not None and not executor.retiring):
            executor.retiring = True
            executor.writer.close()
            self.loop.call_later(5.0, self._reap, executor)

    def _reap(self, executor: Executor) -> None:
        """A retired executor that hasn't exited by now is stuck: end it."""
        if executor.proc is not None and executor.proc.poll() is None:
            executor.proc.kill()

    # ----------------------------------------------------------------------- lifecycle

    async def serve(self) -> None:
        unix_server = await asyncio.start_unix_server(self._on_executor_connection, sock=self.early.listener)
        for _, proc in self.early.executors:
            self._spawn(proc)
        interceptors = []
        if self.args.token:  # a local node: only the head that started us knows this
            from .._auth import server_interceptor

            interceptors.append(server_interceptor(self.args.token))
        server = grpc.aio.server(options=config.GRPC_OPTIONS, interceptors=interceptors)
        pb_grpc.add_NodeServicer_to_server(self, server)
        link_server: asyncio.AbstractServer | None = None
        identity = self.args.tls
        if self.args.runtime_dir:
            # A head on this machine: only a Unix socket in our 0700 directory, never TCP (another
            # user could connect to a loopback port).
            self.address = announced = f"unix:{os.path.join(self.socket_dir, 'node.sock')}"
            server.add_insecure_port(announced)
            # The same Work stream as framed protobuf (see FramedStream): what the local head uses.
            link_server = await asyncio.start_unix_server(
                self._on_head_link, path=os.path.join(self.socket_dir, LINK_SOCKET))
        else:
            listen = f"{self.args.host}:{self.args.port}"
            if identity is not None:
                port = server.add_secure_port(listen, identity.server_credentials())
            else:
                port = server.add_insecure_port(listen)
            self.address = announced = f"{self.args.host}:{port}"
        await server.start()
        self.loop.add_signal_handler(signal.SIGINT, self.stop.set)
        # SIGTERM is how ECS stops a task, and how a Spot interruption is announced (~2 min ahead).
        self.loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self._drain()))
        try:
            sys.stdout.write(announced + "\n")
            sys.stdout.flush()
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        except OSError:  # whoever started us is gone before hearing from us
            log.error("could not announce our address; exiting")
            self.head_lost_at_start = True
            self.stop.set()
        watchdog = asyncio.ensure_future(self._watch_parent())
        self._start_lease(self.args.lease)
        await self.stop.wait()
        watchdog.cancel()
        if self.lease_timer is not None:
            self.lease_timer.cancel()
        if link_server is not None:
            link_server.close()
        await self._shutdown(server, unix_server)

    async def _drain(self) -> None:
        """Stop gracefully: take no more work, hand queued tasks back to the head unrun, let the
        running ones finish (up to the drain timeout), then exit. Nothing is lost: what doesn't
        finish in time is retried elsewhere when this node's stream ends."""
        if self.pool.draining:
            return
        log.warning("draining: no new tasks; %d running", self.pool.running())
        self.to_head(pb.NodeToHeadOp(draining=True))
        self.pool.drain()
        for executor in self.executors.values():
            executor.flush()
        deadline = self.loop.time() + self.args.drain_timeout
        while self.pool.running() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.stop.set()

    def _start_lease(self, lease: float) -> None:
        """Exit unless a head dials within ``lease`` seconds. One timer at a time: a head that
        connects cancels it, so a timer from an earlier disconnection can't end a later lease."""
        if self.lease_timer is not None:
            self.lease_timer.cancel()
        self.lease_timer = asyncio.ensure_future(self._expect_head(lease))

    async def _expect_head(self, lease: float) -> None:
        await asyncio.sleep(lease)
        if not self.head_connected:
            log.error("no head connected within %s s; exiting", lease)
            self.stop.set()

    async def _watch_parent(self) -> None:
        parent = self.args.parent_pid
        while parent:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.error("the head (pid %s) is gone; exiting", parent)
                self.stop.set()
                return

    async def _shutdown(self, server: grpc.aio.Server, unix_server: asyncio.AbstractServer) -> None:
        procs = [e.proc for e in self.executors.values() if e.proc is not None and e.proc.poll() is None]
        for executor in self.executors.values():
            executor.kill_reason = "shutdown"
            if executor.writer is not None:
                executor.writer.close()
        for proc in procs:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        unix_server.close()
        await server.stop(grace=0.2)
        shutil.rmtree(self.socket_dir, ignore_errors=True)  # the executors' socket and object cache
        parent = self.args.parent_pid
        head_gone = (parent and os.getppid() != parent) or self.head_lost_at_start
        if self.args.cleanup_dir and head_gone:
            # The head was killed before it could clean up after itself; its store (with the spill
            # directory it names) and its socket directory are ours to remove.
            from ..store import open_store

            open_store("file://" + self.args.cleanup_dir).destroy()
            if self.args.runtime_dir and self.args.token:
                shutil.rmtree(self.args.runtime_dir, ignore_errors=True)


def _called_by_head(context, cluster_id: str) -> bool:
    from .. import tls  # only remote nodes use TLS (and pay for importing cryptography)

    return tls.peer_common_name(context) == tls.head_name(cluster_id)


#: Seconds a caller of the link socket has to present the node's token.
LINK_HELLO_TIMEOUT_S = 10.0

#: How many of an executor's last stderr lines the error reporting its death carries.
STDERR_TAIL_LINES = 10


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _memory_to_give() -> int:
    """The node's memory resource: what is available to tasks when the node starts (Ray's rule; tasks
    that together ask for more wait). A container's limit, if lower, bounds it."""
    try:
        import psutil

        available = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001
        return 0
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            available = min(available, int(limit))
    except OSError:
        pass
    return available


def run(args: argparse.Namespace, early: Early) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        await NodeServer(args, early).serve()

    asyncio.run(main())
