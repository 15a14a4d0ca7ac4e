"""A TCP proxy that adds network latency without limiting throughput.

    with LatencyProxy("127.0.0.2", 47000, "127.0.0.3", 47000, rtt_ms=40) as proxy:
        ...                              # clients dial 127.0.0.2:47000 and reach 127.0.0.3:47000
        print(proxy.bytes_up, proxy.bytes_down)

Each direction of each connection is delayed by ``rtt_ms / 2``: a chunk is timestamped when it is
read, and written on the other side once its timestamp plus the delay has passed. Reading goes on
meanwhile, so chunks pipeline like bytes in flight on a long link: a stream of many chunks takes one
delay in all, not one per chunk. Buffering is bounded (``max_buffer`` bytes per direction), which
only matters when a receiver stops reading.

The proxy runs an asyncio loop on its own daemon thread; ``start()`` returns once it listens.
Closing either end of a connection closes the other once the data before it has been delivered.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Optional

#: Bytes read at a time from a socket.
CHUNK = 256 * 1024
#: Default bound on the bytes held back in one direction of one connection.
MAX_BUFFER = 64 * 1024 * 1024


class LatencyProxy:
    """Forwards ``listen_host:listen_port`` to ``target_host:target_port``, each direction delayed
    by ``rtt_ms / 2``. ``listen_port`` 0 picks a free port (see ``port``).

    ``bytes_up`` counts the bytes forwarded from clients to the target, ``bytes_down`` those from
    the target back to clients; ``connections`` the connections accepted.
    """

    def __init__(self, listen_host: str, listen_port: int, target_host: str, target_port: int,
                 rtt_ms: float, max_buffer: int = MAX_BUFFER):
        if rtt_ms < 0:
            raise ValueError(f"rtt_ms must be >= 0, got {rtt_ms!r}")
        self.listen_host = listen_host
        self.listen_port = int(listen_port)
        self.target_host = target_host
        self.target_port = int(target_port)
        self.rtt_ms = float(rtt_ms)
        self.max_buffer = int(max_buffer)
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False

    # -- public API ----------------------------------------------------------------------------

    @property
    def delay_s(self) -> float:
        """The delay added to each direction, in seconds."""
        return self.rtt_ms / 2000.0

    @property
    def port(self) -> int:
        """The port the proxy listens on (the chosen one when ``listen_port`` was 0)."""
        return self.listen_port

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        return f"{self.listen_host}:{self.listen_port}"

    def start(self) -> LatencyProxy:
        """Listen and serve on a background thread; raises OSError if the address is taken."""
        if self._thread is not None:
            return self
        if self._closed:
            raise RuntimeError("a closed LatencyProxy cannot be started again")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,), daemon=True,
                                        name=f"latency-proxy-{self.listen_host}:{self.listen_port}")
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(), loop)
        try:
            started.result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop listening, drop every connection, and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()

    def drop_connections(self) -> None:
        """Reset every open connection (both ends), as a network failure would; new connections
        are still accepted."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        def reset() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        loop.call_soon_threadsafe(reset)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LatencyProxy({self.address} -> {self.target_host}:{self.target_port}, "
                f"rtt {self.rtt_ms:g} ms, up {self.bytes_up} B, down {self.bytes_down} B)")

    # -- the loop thread -----------------------------------------------------------------------

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, self.listen_host, self.listen_port, reuse_address=True)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _on_client(self, client_reader: asyncio.StreamReader,
                         client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        self._handlers.add(handler)
        try:
            await self._serve(client_reader, client_writer)
        finally:
            self._handlers.discard(handler)

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.target_host, self.target_port)
        except OSError:
            # Nothing listens behind the proxy (yet): the client sees the connection reset.
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        self._writers.add(target_writer)
        writers = (client_writer, target_writer)

        def abort() -> None:
            for writer in writers:
                writer.transport.abort()

        up = self._spawn(self._pipe(client_reader, target_writer, "bytes_up", abort))
        down = self._spawn(self._pipe(target_reader, client_writer, "bytes_down", abort))
        # Both directions end by themselves (end of stream, or an abort when one breaks);
        # asyncio.wait rather than gather, so that closing the proxy (which cancels them) ends
        # this handler normally.
        await asyncio.wait((up, down))
        if any(not t.cancelled() and t.exception() is not None for t in (up, down)):
            abort()
        for writer in writers:
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    counter: str, abort) -> None:
        """One direction of a connection. This task reads and timestamps chunks; a second one
        writes each at its due time, so reading never waits for the delay. End of stream is
        passed on (a half close) at its due time too. A failed read or write aborts the
        connection (both ends)."""
        loop = asyncio.get_running_loop()
        pending: collections.deque[tuple[float, Optional[bytes]]] = collections.deque()
        buffered = 0
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            nonlocal buffered
            while True:
                while not pending:
                    arrived.clear()
                    await arrived.wait()
                due, data = pending.popleft()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                setattr(self, counter, getattr(self, counter) + len(data))
                writer.write(data)
                await writer.drain()
                buffered -= len(data)
                if buffered <= self.max_buffer:
                    room.set()

        def delivered(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                abort()  # the reader below sees the connection end
                room.set()

        writing = self._spawn(deliver())
        writing.add_done_callback(delivered)
        try:
            while True:
                data = await reader.read(CHUNK)
                pending.append((loop.time() + self.delay_s, data or None))
                arrived.set()
                if not data:
                    break
                buffered += len(data)
                if buffered > self.max_buffer:
                    room.clear()
                    await room.wait()
            await writing
        except Exception:
            abort()  # a reset on one end ends the other direction too
            raise
        finally:
            writing.cancel()
