"""Length-prefixed protobuf frames between a node and its executors (a Unix socket per executor)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

_LEN = struct.Struct("<I")

#: The local head's link to its node (framed protobuf, the node's token first), a socket in the
#: node's owner-only socket directory.
LINK_SOCKET = "link.sock"


def encode(msg) -> bytes:
    data = msg.SerializeToString()
    return _LEN.pack(len(data)) + data


async def read_frames(reader: asyncio.StreamReader):
    """Yield frames as they arrive, taking every complete frame from each read (one await per burst).

    Linear in the bytes read: a frame is copied out once, however many reads it took to arrive."""
    buf = bytearray()
    while True:
        try:
            chunk = await reader.read(1 << 20)
        except ConnectionError:
            return
        if not chunk:
            return
        buf += chunk
        start = 0
        end = len(buf)
        while end - start >= 4:
            (n,) = _LEN.unpack_from(buf, start)
            if end - start - 4 < n:
                break
            view = memoryview(buf)
            frame = bytes(view[start + 4 : start + 4 + n])
            view.release()
            yield frame
            start += 4 + n
        if start:
            del buf[:start]


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


# An executor's last words: where a fatal error's report (faulthandler) goes, beside the node's
# socket; the executor writes it, the node reads it when the executor dies.


def crash_report_path(socket_path: str, executor_id: int) -> str:
    return os.path.join(os.path.dirname(socket_path), f"executor-{executor_id}.crash")


def read_crash_report(socket_path: str, executor_id: int) -> list[str]:
    """The fatal-error report a dead executor left (its lines; [] if none), removing the file."""
    path = crash_report_path(socket_path, executor_id)
    try:
        with open(path, errors="replace") as f:
            text = f.read(8192)
        os.unlink(path)
    except OSError:
        return []
    return text.splitlines()


class FramedStream:
    """One end of a head <-> node link over a Unix socket, with the two methods the link's code
    uses on a gRPC stream: ``read()`` (a parsed ``incoming`` message, or ``grpc.aio.EOF``) and
    ``write(msg)``. The local cluster's link: a frame costs a fraction of a gRPC message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, incoming: type) -> None:
        self._frames = read_frames(reader)
        self._writer = writer
        self._incoming = incoming

    async def read_frame(self) -> bytes | None:
        try:
            return await self._frames.__anext__()
        except StopAsyncIteration:
            return None

    async def read(self):
        import grpc

        frame = await self.read_frame()
        if frame is None:
            return grpc.aio.EOF
        msg = self._incoming()
        msg.ParseFromString(frame)
        return msg

    async def write_frame(self, data: bytes) -> None:
        self._writer.write(_LEN.pack(len(data)) + data)
        await self._writer.drain()

    async def write(self, msg) -> None:
        self._writer.write(encode(msg))
        await self._writer.drain()

    async def abort(self, code, details: str) -> None:
        """Refuse the link (what ``context.abort`` does on a gRPC stream): the peer reads EOF."""
        self._writer.close()
        raise ConnectionRefusedError(details)

    def close(self) -> None:
        self._writer.close()
