"""The head process: gRPC service for drivers, links to nodes, and the head's own lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

import grpc

from .. import _auth, config
from .._files import write_atomic
from .._proto import starburst_pb2 as pb
from .._proto import starburst_pb2_grpc as pb_grpc
from .._version import __version__
from ..framing import SESSION_SOCKET, FramedStream, encode, read_token
from ..store import open_store
from .joblog import JobLogs
from .nodes import NodeLink
from .observer import Observer
from .providers import NodeProvider
from .scheduler import Scheduler, Session

if TYPE_CHECKING:
    from .dashboard import Dashboard

log = logging.getLogger("starburst.head")

#: The provider failing this many ticks in a row (about as many seconds) stops the cluster.
MAX_PROVIDER_FAILURES = 30


class Head(pb_grpc.HeadServicer):
    def __init__(self, args: argparse.Namespace, provider: NodeProvider) -> None:
        self.args = args
        self.cluster_id = args.cluster_id
        self.provider = provider
        self.store = open_store(provider.store_url)
        self.scheduler = Scheduler(self.store)
        self.scheduler.node_shape = provider.node_shape()
        self.observer = Observer(self.scheduler, JobLogs())
        self.scheduler.observer = self.observer
        self.dashboard_url = ""
        self._dashboard: Dashboard | None = None
        self._dashboard_task: asyncio.Future | None = None
        self.links: list[NodeLink] = []
        self.stopping = asyncio.Event()
        self.shutting_down = False
        self.address = ""
        self.drivers_seen = 0
        #: A head started by init() serves that driver first: until the starter's session has
        #: opened, another driver that comes and goes does not end the cluster under it.
        self._starter_pid = os.getppid() if getattr(args, "exit_when_unused", False) else 0
        self._starter_joined = False
        self.started = time.monotonic()
        self.abort_reason = ""
        self._session_server: asyncio.AbstractServer | None = None

    # ----------------------------------------------------------------------- driver sessions

    async def Session(self, request_iterator, context):  # noqa: N802 - gRPC method name
        if self.shutting_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the head is shutting down")
        queue: asyncio.Queue = asyncio.Queue()
        session = Session(self.scheduler, "job-" + uuid.uuid4().hex[:12], queue.put_nowait)
        self.scheduler.open_session(session)
        self.drivers_seen += 1

        async def read() -> None:
            try:
                while True:
                    msg = await context.read()
                    if msg is grpc.aio.EOF:
                        break
                    self.scheduler.on_client_ops(session, msg.ops)
                    self.scheduler.flush()
                    if not self._starter_joined and session.pid == self._starter_pid:
                        self._starter_joined = True
            except (asyncio.CancelledError, grpc.aio.AioRpcError, ConnectionError):
                pass
            except Exception:
                log.exception("head failed handling a session")
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        last_write = 0.0
        try:
            while True:
                ops = await queue.get()
                if ops is None:
                    break
                if session.outstanding > 1:  # more results are coming: send them together
                    await asyncio.sleep(config.batch_delay(last_write))
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        queue.put_nowait(None)
                        break
                    ops.extend(more)
                for message in config.batch_messages(pb.HeadMsg, ops):
                    await context.write(message)
                last_write = time.monotonic()
        finally:
            reader.cancel()
            self.scheduler.close_session(session)
            self.scheduler.flush()
            self._maybe_exit_unused()

    async def _on_framed_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A driver's session over the framed socket; its first frame is the cluster's token."""
        try:
            if not await read_token(reader, self.token):
                log.warning("refused a session without this cluster's token")
                # What gRPC's status says: the driver reports it (and doesn't take us for gone).
                refused = pb.HeadMsg(ops=[pb.HeadOp(error="UNAUTHENTICATED: wrong or missing starburst token")])
                writer.write(encode(refused))
                await writer.drain()
                return
            await self.Session(None, FramedStream(reader, writer, pb.ClientMsg, config.MAX_MESSAGE_BYTES,
                                                  answer_pings=True))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _driver_sessions(self) -> int:
        return sum(1 for s in self.scheduler.sessions.values() if s.kind == "driver" and "/" not in s.session_id)

    def _starter_coming(self) -> bool:
        """Our starter (init() in a driver) is alive and has not opened its session yet."""
        return bool(self._starter_pid) and not self._starter_joined and os.getppid() == self._starter_pid

    def _maybe_exit_unused(self) -> None:
        if self.args.exit_when_unused and self._driver_sessions() == 0 and not self._starter_coming():
            # From now on no driver may join (one that found us a moment ago is refused and starts a
            # new cluster): the last driver has left, so the cluster ends.
            self.shutting_down = True
            self._remove_head_file()
            self.stopping.set()

    async def Status(self, request, context):  # noqa: N802
        reply = pb.StatusReply(
            head_version=__version__, pid=os.getpid(), uptime_s=time.monotonic() - self.started,
            sessions=self._driver_sessions(), tasks_finished=self.scheduler.tasks_finished,
            store_url=self.store.url, cluster_id=self.cluster_id,
        )
        st = self.scheduler.status()
        reply.queued, reply.running = st["queued"] + st["waiting"], st["running"]
        reply.tasks_failed, reply.tasks_cancelled = st["failed"], st["cancelled"]
        reply.objects, reply.object_bytes = st["objects"], st["object_bytes"]
        reply.cluster.CopyFrom(self.provider.status())
        for node in self.scheduler.nodes:
            reply.nodes.add(
                node_id=node.node_id, address=node.hello.address, resources=node.hello.resources,
                cpus_in_use=node.cpus_in_use(), running=node.started(), queued=node.unstarted(),
                pid=node.hello.pid, executors=node.executors,
            )
        return reply

    async def Shutdown(self, request, context):  # noqa: N802
        self.stopping.set()
        return pb.ShutdownReply()

    # ----------------------------------------------------------------------- nodes

    async def connect_node(self, address: str) -> NodeLink:
        """Dial a node (through the provider's channel: TLS for remote ones) and add it to the
        cluster; raises ConnectionError when it can't be reached or doesn't match the driver."""
        link = NodeLink(self.scheduler, address, self._link_lost, self.provider.channel,
                        self.provider.node_metadata(address), self.provider.framed_link(address))
        self.links.append(link)
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        link.task = asyncio.ensure_future(link.run(ready))
        await ready
        return link

    def _link_lost(self, link: NodeLink, reason: str) -> None:
        if link in self.links:
            self.links.remove(link)
        if not self.shutting_down and link.node is not None:  # (a node not up yet is no news)
            log.warning("lost node at %s: %s", link.address, reason)
            self.provider.node_lost(link.address, reason)

    def abort(self, reason: str) -> None:
        """Stop the cluster because it can't go on (budget reached, nodes can't start): every
        driver is told why, unfinished tasks fail with that reason, and the head shuts down."""
        if self.abort_reason:
            return
        self.abort_reason = reason
        log.error("stopping the cluster: %s", reason)
        self.scheduler.abort(reason)
        self.scheduler.flush()
        self.stopping.set()

    async def _tick(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(1.0)
            self.observer.sample()
            self.scheduler.settle()
            try:
                self.scheduler.store.release_unused()
            except OSError:
                log.exception("could not give back the object store's unused memory")
            try:
                await self.provider.tick()
                failures = 0
            except Exception as exc:
                failures += 1
                log.exception("node provider failed (%d in a row)", failures)
                if failures >= MAX_PROVIDER_FAILURES:
                    self.abort(f"the cluster's nodes can't be managed: {exc!r} ({failures} times in a row)")

    # ----------------------------------------------------------------------- lifecycle

    async def serve(self) -> None:
        # Drivers on this machine reach us through a Unix socket in the owner's 0700 runtime
        # directory; every call (also over --listen's TCP port) must carry our token.
        self.runtime_dir = config.cluster_runtime_dir(self.cluster_id)
        self.token = _auth.new_token()
        _auth.write_token(self.runtime_dir, self.token)
        server = grpc.aio.server(options=config.GRPC_OPTIONS,
                                 interceptors=[_auth.server_interceptor(self.token)])
        pb_grpc.add_HeadServicer_to_server(self, server)
        self.address = f"unix:{self.runtime_dir / 'head.sock'}"
        server.add_insecure_port(self.address)
        # The same Session stream as framed protobuf, for drivers on this machine (see client.py).
        self._session_server = await asyncio.start_unix_server(
            self._on_framed_session, path=str(self.runtime_dir / SESSION_SOCKET))
        self.listen_address = ""
        if self.args.listen:
            host = self.args.listen.rpartition(":")[0]
            try:
                port = server.add_insecure_port(self.args.listen)
            except RuntimeError:  # grpcio raises when it can't bind (older ones returned 0)
                port = 0
            if not port:
                announce(f"error: could not listen on {self.args.listen} (an address of this machine and a "
                         "free port?)")
                self.store.destroy()
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
                raise SystemExit(1)
            self.listen_address = f"{self.token}@{host}:{port}"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # outlives the terminal it was started from
        provider_start = asyncio.ensure_future(self.provider.start(self))
        await server.start()
        try:
            await provider_start
            if self.stopping.is_set():
                raise RuntimeError("stopped while starting")
        except BaseException as exc:  # e.g. no node could be launched: tell our starter
            log.exception("the cluster could not start")
            try:
                await self.provider.stop()
            finally:
                announce(f"error: {exc}")
                await server.stop(grace=0)
                self.store.destroy()
                shutil.rmtree(self.runtime_dir, ignore_errors=True)
            raise SystemExit(1) from None
        ticker = asyncio.ensure_future(self._tick())
        # The URL is known now (its socket is bound); it serves once aiohttp is imported, on a
        # thread, after we announced (so the import never delays a cluster's start).
        self._dashboard_task = self._start_dashboard()
        self._write_head_file()
        if not announce(self.address):
            # Our starter is gone (Ctrl-C, killed) before it learnt where we listen: nobody will
            # connect, so whatever we launched would only bill. Stop now.
            log.warning("the process that started this head is gone; stopping the cluster")
            self.stopping.set()
        elif getattr(self.args, "confirm_start", False):
            asyncio.ensure_future(self._await_confirmation())
        if self.args.exit_when_unused:
            asyncio.ensure_future(self._exit_if_nobody_comes())
        await self.stopping.wait()
        ticker.cancel()
        await self.shutdown(server)

    def _start_dashboard(self) -> asyncio.Future | None:
        """Bind the dashboard's socket now (its URL goes into head.json) and serve it in the
        background; the cluster works without it if it fails."""
        from .dashboard import Dashboard

        try:
            dashboard = self._dashboard = Dashboard(self)
        except OSError:
            log.exception("the dashboard could not start")
            return None
        self.dashboard_url = dashboard.url

        async def start() -> None:
            try:
                await dashboard.start()
            except Exception:
                log.exception("the dashboard could not start")

        return asyncio.ensure_future(start())

    async def _await_confirmation(self) -> None:
        """'starburst up' says 'ok' on our stdin once it has our address; init() keeps our stdin
        open while it lives. EOF without 'ok' means the starter is gone (killed, interrupted): with
        no driver connected, nobody will use us, so stop."""
        loop = asyncio.get_running_loop()
        got: asyncio.Future[str] = loop.create_future()

        def read() -> None:  # a daemon thread: a starter alive at our exit must not hold us up
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            def deliver() -> None:
                if not got.done():
                    got.set_result(line)

            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting anyway
                loop.call_soon_threadsafe(deliver)

        threading.Thread(target=read, name="starter-pipe", daemon=True).start()
        line = await got
        if line.strip() == "ok" or (self.args.exit_when_unused and self._driver_sessions()):
            return
        log.warning("the process that started this head is gone and no driver is connected; stopping the cluster")
        self.stopping.set()

    async def _exit_if_nobody_comes(self) -> None:
        await asyncio.sleep(60)
        if self.drivers_seen == 0:
            self.stopping.set()

    def _write_head_file(self) -> None:
        info = {
            "address": self.address, "pid": os.getpid(), "cluster_id": self.cluster_id,
            "store_url": self.store.url, "version": __version__,
            "started_by": "init" if self.args.exit_when_unused else "up", "num_cpus": self.args.num_cpus,
            "provider": self.provider.name, "dashboard": self.dashboard_url, "listen": self.listen_address,
        }
        write_atomic(config.head_file(), [json.dumps(info).encode()])

    def _remove_head_file(self) -> None:
        path = config.head_file()
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass

    async def shutdown(self, server: grpc.aio.Server) -> None:
        self.shutting_down = True
        self._remove_head_file()
        if self.abort_reason:
            # Give the drivers a moment to receive why before their sessions end.
            await asyncio.sleep(0.2)
        for link in list(self.links):
            link.shutdown()
        self.scheduler.flush()
        try:
            await self.provider.stop()
        finally:
            for link in list(self.links):
                if link.task is not None:
                    link.task.cancel()
            if self._session_server is not None:
                self._session_server.close()
            await server.stop(grace=0.5)
            if self._dashboard_task is not None:
                self._dashboard_task.cancel()
            if self._dashboard is not None:
                await self._dashboard.stop()
            if self.observer.joblogs is not None:
                self.observer.joblogs.close()
            self.scheduler.drop_all_objects()
            self.store.destroy()
            self.store.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def announce(address: str) -> bool:
    """Tell whoever started us where we listen, then send our stdout to the log (stderr). False
    when nobody reads it any more (the starter was interrupted or killed); never raises."""
    told = True
    try:
        sys.stdout.write(address + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # BrokenPipeError: the reading end is closed
        told = False
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return told


def run(args: argparse.Namespace, provider: NodeProvider) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        await Head(args, provider).serve()

    asyncio.run(main())
    _drop_empty_log()


def _drop_empty_log() -> None:
    """No empty log files: remove our log (stderr) if nothing was written to it, the usual case
    for a head that ran without trouble. Its nodes have stopped by now."""
    path = config.head_log()
    try:
        ours, there = os.fstat(sys.stderr.fileno()), path.stat()
        if there.st_size == 0 and (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
            path.unlink()
    except (OSError, ValueError):
        pass
