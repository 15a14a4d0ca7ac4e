"""Length-prefixed protobuf frames between a node and its executors (a Unix socket per executor)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct

_LEN = struct.Struct("<I")


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
