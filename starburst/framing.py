"""Length-prefixed protobuf frames over Unix sockets: the local links that don't need gRPC.

A frame is a 4-byte little-endian length and a serialized message. Node <-> executor use them with
blocking sockets (:func:`iter_frames`, :func:`recv_frame`) and asyncio streams (:func:`read_frames`); the local head's
links (driver <-> head on ``session.sock``, head <-> node on ``link.sock``) use
:class:`FramedStream`, which gives them the read/write methods of a gRPC stream, after a first frame
that carries the token (:func:`read_token`). :class:`FrameSplitter` cuts frames out of the bytes for
both."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import struct
import threading
import time
from typing import Iterator

_LEN = struct.Struct("<I")

#: The local head's link to its node (framed protobuf, the node's token first), a socket in the
#: node's owner-only socket directory.
LINK_SOCKET = "link.sock"

#: Drivers' sessions with a local head (framed protobuf, the cluster's token first), beside its
#: gRPC socket in the cluster's owner-only runtime directory.
SESSION_SOCKET = "session.sock"

#: An actor's process takes its creator's calls directly (driver/direct.py) on this socket in its
#: node's socket directory, formatted with the executor's id; the node removes it when the process ends.
ACTOR_SOCKET = "actor-{}.sock"


def encode(msg) -> bytes:
    """A protobuf message as one frame."""
    return frame(msg.SerializeToString())


def frame(data: bytes) -> bytes:
    """``data`` as one frame: its length (4 bytes, little-endian) and the bytes."""
    return _LEN.pack(len(data)) + data


class FrameTooLarge(ConnectionError):
    """A frame over the receiver's (or sender's) limit: the link ends (like gRPC's RESOURCE_EXHAUSTED)."""


class FrameSplitter:
    """Cut complete frames out of a byte stream as it arrives (linear in the bytes: each frame is
    copied out once, however many reads it took to arrive). A frame announced larger than
    ``limit`` raises FrameTooLarge before it is read."""

    def __init__(self, limit: int | None = None) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the frames it completed, in order."""
        buf = self._buf
        buf += chunk
        frames = []
        start, end = 0, len(buf)
        while end - start >= 4:
            (n,) = _LEN.unpack_from(buf, start)
            if self._limit is not None and n > self._limit:
                raise FrameTooLarge(f"a frame of {n} bytes is over the {self._limit} byte limit")
            if end - start - 4 < n:
                break
            with memoryview(buf) as view:
                frames.append(bytes(view[start + 4 : start + 4 + n]))
            start += 4 + n
        if start:
            del buf[:start]
        return frames


async def read_frames(reader: asyncio.StreamReader, limit: int | None = None):
    """Yield frames as they arrive, taking every complete frame from each read (one await per burst)."""
    frames = FrameSplitter(limit)
    while True:
        try:
            chunk = await reader.read(1 << 20)
        except ConnectionError:
            return
        if not chunk:
            return
        for frame in frames.feed(chunk):
            yield frame


def iter_frames(sock: socket.socket, limit: int | None = None) -> Iterator[bytes]:
    """The frames arriving on a blocking socket, every one that has arrived taken with one read,
    until the peer closes it (or it breaks). FrameTooLarge past ``limit``."""
    frames = FrameSplitter(limit)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:  # e.g. reset: the peer closed while our last message was unread
            return
        if not chunk:
            return
        yield from frames.feed(chunk)


def recv_frame(sock: socket.socket) -> bytes | None:
    header = _recv_exactly(sock, 4)
    if header is None:
        return None
    return _recv_exactly(sock, _LEN.unpack(header)[0])


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except OSError:  # e.g. reset: the node closed while our last message was unread
            return None
        if k == 0:
            return None
        got += k
    return bytes(buf)


class FramedStream:
    """One end of a local head's link (a driver's session, or the link to its node) over a Unix
    socket, with the methods the link's code uses on a gRPC stream: ``read()`` (a parsed
    ``incoming`` message, or ``grpc.aio.EOF``), ``write(msg)``, ``done_writing()``, ``cancel()``. A
    frame costs a fraction of a gRPC message.

    An empty frame is a keepalive ping (no message on these links is empty: writers send batches of
    one or more operations): the side made with ``answer_pings`` answers it with an empty frame, and
    :meth:`keepalive` on the other side ends the link when a ping goes unanswered.

    Another thread may write too (:meth:`put_from_thread`, a driver's calls made when its session
    thread is idle). Every write holds :attr:`lock`; bytes the socket did not take at once leave
    through the loop ahead of anything written after them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, incoming: type,
                 limit: int | None = None, answer_pings: bool = False) -> None:
        self._reader = reader
        self._writer = writer
        self._incoming = incoming
        self._limit = limit
        self._answer_pings = answer_pings
        self._frames = FrameSplitter(limit)
        self._ready: collections.deque[bytes] = collections.deque()
        self.last_heard = time.monotonic()
        #: Held by every write, and by a caller that must take what to send and write it in one go.
        self.lock = threading.Lock()
        self._rest: bytes | None = None  # the part of a write from another thread not sent yet
        sock = writer.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    async def _fill(self) -> bool:
        """Take the next burst of bytes, queueing its complete frames (answering pings); False at EOF."""
        try:
            chunk = await self._reader.read(1 << 20)
        except ConnectionError:
            return False
        if not chunk:
            return False
        self.last_heard = time.monotonic()
        for frame in self._frames.feed(chunk):
            if frame:
                self._ready.append(frame)
            elif self._answer_pings and not self._writer.is_closing():
                with self.lock:
                    self._put_bytes(_LEN.pack(0))
        return True

    async def read(self):
        """The next message; the messages that arrived in the same burst come merged into it (their
        operations in order), so the reader makes one pass for them all. ``grpc.aio.EOF`` at the end."""
        while not self._ready:
            if not await self._fill():
                import grpc

                return grpc.aio.EOF
        msg = self._incoming()
        msg.ParseFromString(self._ready.popleft())
        while self._ready:
            msg.MergeFromString(self._ready.popleft())  # repeated ``ops``: appended
        return msg

    async def write_frame(self, data: bytes) -> None:
        with self.lock:
            self._put_bytes(_LEN.pack(len(data)) + data)
        await self._writer.drain()

    async def write(self, msg) -> None:
        with self.lock:
            self.put(msg)
        await self._writer.drain()

    async def drain(self) -> None:
        """Wait until the socket has taken what was put (flow control), as ``write`` does."""
        await self._writer.drain()

    def _encode_checked(self, msg) -> bytes:
        data = encode(msg)
        if self._limit is not None and len(data) - 4 > self._limit:
            raise FrameTooLarge(f"a message of {len(data) - 4} bytes is over the {self._limit} byte limit")
        return data

    def put(self, msg) -> None:
        """Write ``msg`` without waiting (on the loop's thread, holding :attr:`lock`)."""
        self._put_bytes(self._encode_checked(msg))

    def _put_bytes(self, data: bytes) -> None:
        if self._rest is not None:
            self._writer.write(self._rest)
            self._rest = None
        self._writer.write(data)

    def can_put_from_thread(self) -> bool:
        """Whether :meth:`put_from_thread` may write now: nothing is waiting to go out (call it
        holding :attr:`lock`)."""
        return (self._loop is not None and self._fd >= 0 and self._rest is None
                and not self._writer.is_closing() and not self._writer.transport.get_write_buffer_size())

    def put_from_thread(self, msg) -> None:
        """Write ``msg`` from a thread other than the loop's, holding :attr:`lock`, after
        :meth:`can_put_from_thread` said yes. What the socket doesn't take at once (or a write
        error, which the loop then meets) goes through the loop. FrameTooLarge as ``put``."""
        data = self._encode_checked(msg)
        try:
            sent = os.write(self._fd, data)
        except OSError:
            sent = 0
        if sent < len(data):
            self._rest = data[sent:]
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._put_rest)
            except RuntimeError:  # the link ended meanwhile (its loop is closed): nothing more goes
                self._rest = None

    def _put_rest(self) -> None:
        with self.lock:
            if self._rest is not None and not self._writer.is_closing():
                self._writer.write(self._rest)
            self._rest = None

    async def done_writing(self) -> None:
        if self._writer.can_write_eof():
            self._writer.write_eof()

    async def keepalive(self, interval: float, timeout: float) -> str:
        """Ping every ``interval`` seconds of silence; returns (and closes the link) when the peer
        has not been heard from for ``timeout`` seconds after a ping (a stopped or hung process)."""
        while True:
            await asyncio.sleep(max(0.0, self.last_heard + interval - time.monotonic()))
            if time.monotonic() - self.last_heard < interval:
                continue
            sent = time.monotonic()
            if self._writer.is_closing():
                return "closed"
            with self.lock:
                self._put_bytes(_LEN.pack(0))
            await asyncio.sleep(timeout)
            if self.last_heard < sent:
                self._writer.close()
                return f"no answer to a keepalive ping in {timeout:.0f} s"

    async def abort(self, code, details: str) -> None:
        """Refuse the link (what ``context.abort`` does on a gRPC stream): the peer reads EOF."""
        self._writer.close()
        raise ConnectionRefusedError(details)

    def close(self) -> None:
        """End the link from this side (also as ``cancel()``, what a gRPC call has): ``read()``
        then returns EOF."""
        self._writer.close()

    cancel = close


async def read_token(reader: asyncio.StreamReader, expected: str, timeout: float = 10.0) -> bool:
    """Whether the caller's first frame is ``expected`` (compared in constant time). Reads nothing
    more than a frame of the token's size, for at most ``timeout`` seconds."""
    import hmac

    want = expected.encode()
    try:
        (size,) = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), timeout))
        if not want or size != len(want):
            return False
        return hmac.compare_digest(await asyncio.wait_for(reader.readexactly(size), timeout), want)
    except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return False
