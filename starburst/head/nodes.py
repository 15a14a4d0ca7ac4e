"""Nodes as the head sees them: starting local node processes and the Work stream to each node."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Callable

import grpc

from .. import config
from .._proto import starburst_pb2 as pb
from .._proto import starburst_pb2_grpc as pb_grpc
from .scheduler import Node, Scheduler, Session

log = logging.getLogger("starburst.head")


class NodeLink:
    """The head's end of one node's Work stream. The head dials; the node answers with its hello."""

    def __init__(self, scheduler: Scheduler, address: str, on_lost: Callable[["NodeLink", str], None]) -> None:
        self.scheduler = scheduler
        self.address = address
        self.node: Node | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._on_lost = on_lost
        self._executor_sessions: dict[int, Session] = {}
        self.task: asyncio.Task | None = None

    async def run(self, ready: asyncio.Future) -> None:
        reason = "stream ended"
        try:
            async with grpc.aio.insecure_channel(self.address, options=config.GRPC_OPTIONS) as channel:
                call = pb_grpc.NodeStub(channel).Work()
                first = await call.read()
                if first is grpc.aio.EOF or not first.ops or first.ops[0].WhichOneof("op") != "hello":
                    raise ConnectionError(f"node at {self.address} did not say hello")
                hello = first.ops[0].hello
                self.node = Node(self.scheduler, hello.node_id, hello, self._queue.put_nowait)
                self.scheduler.add_node(self.node)
                self.scheduler.flush()
                if not ready.done():
                    ready.set_result(self.node)
                writer = asyncio.ensure_future(self._write(call))
                try:
                    while True:
                        msg = await call.read()
                        if msg is grpc.aio.EOF:
                            break
                        self.scheduler.on_node_ops(self.node, msg.ops, self._relay)
                        self.scheduler.flush()
                finally:
                    writer.cancel()
        except grpc.aio.AioRpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
        except (ConnectionError, OSError) as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            reason = "head is shutting down"
        finally:
            if not ready.done():
                ready.set_exception(ConnectionError(f"could not reach node at {self.address}: {reason}"))
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        for session in self._executor_sessions.values():
            self.scheduler.close_session(session)
        self._executor_sessions.clear()
        if self.node is not None:
            self.scheduler.remove_node(self.node, reason)
            self.scheduler.flush()
        self._on_lost(self, reason)

    async def _write(self, call) -> None:
        while True:
            ops = await self._queue.get()
            while not self._queue.empty():
                ops.extend(self._queue.get_nowait())
            await call.write(pb.HeadToNode(ops=ops))

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
                node.push(pb.HeadToNodeOp(relay=pb.Relay(executor=executor, down=pb.HeadMsg(ops=ops))))

            session = Session(self.scheduler, f"{node.node_id}/e{executor}", deliver)
            self._executor_sessions[executor] = session
            self.scheduler.open_session(session)
        self.scheduler.on_client_ops(session, relay.up.ops)

    def shutdown(self) -> None:
        if self.node is not None:
            self.node.push(pb.HeadToNodeOp(shutdown=True))


class LocalNodeProcess:
    """A node process on this machine (the embedded default cluster has one)."""

    def __init__(self, node_id: str, num_cpus: float, store_url: str, log_path: str, runtime_dir: str) -> None:
        self.node_id = node_id
        self.runtime_dir = runtime_dir
        self.num_cpus = num_cpus
        self.store_url = store_url
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> str:
        """Start the process; returns the address it listens on."""
        log_file = open(self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "starburst.node",
                "--node-id", self.node_id, "--num-cpus", str(self.num_cpus),
                "--store", self.store_url, "--parent-pid", str(os.getpid()),
                "--runtime-dir", self.runtime_dir, "--cleanup-dir", self.runtime_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            )
        finally:
            log_file.close()
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"local node exited with {self.proc.returncode} before listening; see {self.log_path}")
        return line.decode().strip()

    async def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
