"""Nodes as the head sees them: starting local node processes and the Work stream to each node."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import subprocess
import threading
import time
from typing import Callable

import grpc

from .. import config
from .._proto import starburst_pb2 as pb
from .._version import runtime_versions, version_drift
from ..framing import FramedStream
from .launch import spawn_local_node
from .scheduler import Node, Scheduler, Session

log = logging.getLogger("starburst.head")


#: Seconds between round-trip measurements of a node's link.
PING_INTERVAL_S = 10.0


class VersionDriftError(ConnectionError):
    """A node's Python or pickling-relevant packages differ from the driver's."""


class NodeLink:
    """The head's end of one node's Work stream. The head dials; the node answers with its hello."""

    def __init__(self, scheduler: Scheduler, address: str, on_lost: Callable[["NodeLink", str], None],
                 channel: Callable[[str], grpc.aio.Channel], metadata: tuple = (),
                 framed: tuple[str, str] | None = None) -> None:
        self.scheduler = scheduler
        #: (socket path, token) of the node's framed link (a local node), used instead of gRPC
        self._framed = framed
        self._metadata = metadata
        self._channel = channel
        self.address = address
        self.node: Node | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._on_lost = on_lost
        self._executor_sessions: dict[int, Session] = {}
        self._pings: dict[int, float] = {}
        self._rtts: collections.deque[float] = collections.deque(maxlen=8)
        self.task: asyncio.Task | None = None

    async def run(self, ready: asyncio.Future) -> None:
        reason = "stream ended"
        try:
            if self._framed is not None:
                path, token = self._framed
                reader, writer = await asyncio.open_unix_connection(path)
                stream = FramedStream(reader, writer, pb.NodeToHead)
                # gRPC streams ping by themselves; this one notices a stopped or hung node the same way.
                keepalive = asyncio.ensure_future(stream.keepalive(config.KEEPALIVE_S, 10.0))
                try:
                    await stream.write_frame(token.encode())
                    await self._serve(stream, ready)
                finally:
                    keepalive.cancel()
                    stream.close()
            else:
                async with self._channel(self.address) as channel:
                    # The Node service's Work method, with a parser that counts the bytes received
                    # from a remote (Fargate) node: data transfer out of AWS, which the cost meter
                    # bills. This machine's node (a unix: address, as in a hybrid cluster) costs nothing.
                    parse = pb.NodeToHead.FromString if self.address.startswith("unix:") else self._parse
                    work = channel.stream_stream("/starburst.v1.Node/Work",
                                                 request_serializer=pb.HeadToNode.SerializeToString,
                                                 response_deserializer=parse)
                    await self._serve(work(metadata=self._metadata), ready)
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except (ConnectionError, OSError) as exc:
            reason = str(exc)
            if isinstance(exc, VersionDriftError) and not ready.done():
                ready.set_exception(exc)
        except asyncio.CancelledError:
            reason = "head is shutting down"
        except Exception as exc:
            log.exception("head failed handling a node's stream")
            reason = f"internal error: {exc!r}"
        finally:
            if not ready.done():
                ready.set_exception(ConnectionError(f"could not reach node at {self.address}: {reason}"))
            self._lost(reason)

    def _parse(self, data: bytes) -> pb.NodeToHead:
        self.scheduler.bytes_from_nodes += len(data)
        return pb.NodeToHead.FromString(data)

    async def _serve(self, call, ready: asyncio.Future) -> None:
        """The Work stream (gRPC, or a FramedStream with the same read/write): hello, then work."""
        first = await call.read()
        if first is grpc.aio.EOF or not first.ops or first.ops[0].WhichOneof("op") != "hello":
            raise ConnectionError(f"node at {self.address} did not say hello")
        hello = first.ops[0].hello
        drift = version_drift(runtime_versions(), dict(hello.versions))
        if drift:
            raise VersionDriftError(
                f"node {hello.node_id} can't run this driver's tasks: its versions differ ("
                + "; ".join(drift) + "). Values pickled on one side would not unpickle on the "
                "other. Rebuild the worker image from this environment with 'starburst env --rebuild'.")
        self.node = Node(self.scheduler, hello.node_id, hello, self._queue.put_nowait)
        self.scheduler.add_node(self.node)
        self.scheduler.flush()
        if not ready.done():
            ready.set_result(self.node)
        writer = asyncio.ensure_future(self._write(call))
        writer.add_done_callback(self._writer_done)
        pinger = asyncio.ensure_future(self._ping())
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                self.scheduler.on_node_ops(self.node, msg.ops, self._relay)
                if self._pings:
                    self._pongs(msg.ops)
                self.scheduler.flush()
        finally:
            writer.cancel()
            pinger.cancel()

    async def _ping(self) -> None:
        """Measure the round trip to the node now and then: the scheduler keeps more tasks in
        flight on a far-away node (see ``Node.depth``)."""
        seq = 0
        while True:
            seq += 1
            self._pings[seq] = time.monotonic()
            self._queue.put_nowait([pb.HeadToNodeOp(ping=seq)])
            await asyncio.sleep(0.5 if seq < 4 else PING_INTERVAL_S)

    def _pongs(self, ops) -> None:
        for op in ops:
            if op.WhichOneof("op") == "pong":
                sent = self._pings.pop(op.pong, None)
                if sent is not None and self.node is not None:
                    self._rtts.append(time.monotonic() - sent)
                    # The smallest recent sample: the link's delay, not the node's batching.
                    self.node.rtt = min(self._rtts)

    def _writer_done(self, writer: asyncio.Task) -> None:
        if not writer.cancelled() and writer.exception() is not None:
            log.error("writing to node at %s failed: %r; dropping it", self.address, writer.exception())
            if self.task is not None:
                self.task.cancel()

    def _lost(self, reason: str) -> None:
        for session in self._executor_sessions.values():
            self.scheduler.close_session(session)
        self._executor_sessions.clear()
        if self.node is not None:
            self.scheduler.remove_node(self.node, reason)
            self.scheduler.flush()
        self._on_lost(self, reason)

    async def _write(self, call) -> None:
        last_write = 0.0
        while True:
            ops = await self._queue.get()
            node = self.node
            if node is not None and len(node.inflight) > 2 * node.total["CPU"]:
                # The node has plenty queued: gather more before the next (costly) write.
                await asyncio.sleep(config.batch_delay(last_write))
            while not self._queue.empty():
                ops.extend(self._queue.get_nowait())
            for message in config.batch_messages(pb.HeadToNode, ops):
                await call.write(message)
            last_write = time.monotonic()

    def _relay(self, node: Node, relay: pb.Relay) -> None:
        """An executor's session with the head, tunnelled through its node."""
        executor = relay.executor
        session = self._executor_sessions.get(executor)
        if relay.closed:
            if session is not None:
                del self._executor_sessions[executor]
                self.scheduler.close_session(session)
            return
        if session is None:
            def deliver(ops: list, executor: int = executor) -> None:
                for message in config.batch_messages(pb.HeadMsg, ops):
                    node.push(pb.HeadToNodeOp(relay=pb.Relay(executor=executor, down=message)))

            session = Session(self.scheduler, f"{node.node_id}/e{executor}", deliver)
            self._executor_sessions[executor] = session
            self.scheduler.open_session(session)
        self.scheduler.on_client_ops(session, relay.up.ops)

    def shutdown(self) -> None:
        if self.node is not None:
            self.node.push(pb.HeadToNodeOp(shutdown=True))


class LocalNodeProcess:
    """A node process on this machine (the embedded default cluster has one)."""

    def __init__(self, node_id: str, num_cpus: float, store_dir: str, log_path: str,
                 proc: subprocess.Popen | None, runtime_dir: str, token: str, store_url: str = "") -> None:
        self.node_id = node_id
        self.store_url = store_url
        self.runtime_dir = runtime_dir
        self.token = token
        self.num_cpus = num_cpus
        self.store_dir = store_dir
        self.log_path = log_path
        self.proc = proc

    async def start(self) -> str:
        """Start the process (unless it was started early); returns the address it listens on."""
        if self.proc is None:
            self.proc = spawn_local_node(self.node_id, self.num_cpus, self.store_dir, self.log_path,
                                         self.runtime_dir, self.token, self.store_url)
        proc = self.proc
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout=60)
        proc.stdout.close()
        if not line:
            code = await self.wait()
            raise RuntimeError(f"local node exited with {code} before listening; see {self.log_path}")
        return line.decode().strip()

    def remove_files(self) -> None:
        """Remove the directories of this (exited) node: its sockets and executors' files."""
        import glob
        import shutil

        for path in glob.glob(os.path.join(glob.escape(self.runtime_dir), f"{self.node_id}-*")):
            shutil.rmtree(path, ignore_errors=True)

    async def wait(self) -> int:
        """Wait for the process to exit (on a thread of its own: it may live as long as the head)."""
        proc = self.proc
        assert proc is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(code: int) -> None:
            if not done.done():
                done.set_result(code)

        def waiter() -> None:
            code = proc.wait()
            try:
                loop.call_soon_threadsafe(settle, code)
            except RuntimeError:
                pass

        threading.Thread(target=waiter, daemon=True).start()
        return await done

    async def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
