"""Calls straight to an actor's process: the driver's half of ``ActorDirect``.

A driver that created an actor on this machine's node is told (``HeadOp.actor_direct``) the Unix
socket and token of the actor's process. ``Client.submit`` then writes each eligible call (a method
call whose arguments hold no refs still to resolve, not a generator) as a framed ``Run`` on a
:class:`DirectChannel`, from the calling thread, and tells the head of it in its next batch
(``TaskSpec.direct``). The actor's process answers with the call's ``TaskDone`` on the same
connection: one socket crossing each way where the head's path takes three. The client keeps the
values and forwards the ``TaskDone`` to the head (``ClientOp.direct_done``), which keeps the books
(the objects, the dashboard, retries) exactly as for a call it sent itself.

What goes wrong is the head's to decide, as for any call: a connection that breaks leaves the
calls in flight to the head (the actor's death reaches it from the node; the calls are retried or
fail, and their values come to the client as for any call). A result that holds refs goes to the
head through the node (after the refs it holds), and the actor's process tells the caller so
(``TaskDone.via_node``): the value then comes from the head.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

from .._proto import starburst_pb2 as pb
from ..framing import encode, frame, iter_frames

__all__ = ["DirectChannel"]

#: With this many calls sent and not answered to an actor that runs its calls in order, later ones
#: wait in the channel and leave together when the next answer comes (the actor has that many
#: queued still): a write, and a wake-up of the actor's reader, per batch instead of per call.
#: Calls sent while fewer are out leave at once. Calls to an actor that runs several at once always
#: leave at once: the calls out may be waiting for a later one (an async actor's event, a queue).
BUFFER_AFTER = 8


class DirectChannel:
    """One connection to one incarnation of an actor's process. Thread-safe."""

    def __init__(self, announced: pb.ActorDirect, on_done: Callable[["DirectChannel", pb.TaskDone], None],
                 on_lost: Callable[["DirectChannel"], None]) -> None:
        self.actor_id = announced.actor_id
        self.incarnation = announced.incarnation
        self.ordered = announced.ordered
        self._address = announced.address
        self._token = announced.token.encode()
        self._on_done = on_done
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        #: False once the connection failed or broke: calls go through the head from then on.
        self.alive = True
        #: Calls sent on this channel and not answered yet (task id -> first return id, in the
        #: order sent); kept by the client's lock.
        self.inflight: dict[bytes, bytes] = {}
        # Kept by _lock: calls written and not answered (answers counted as they come), and the
        # frames of calls waiting to leave (invariant: none wait unless some are out, so an
        # answer, or the connection's end, always comes to send or drop them).
        self._out = 0
        self._unsent: list[bytes] = []

    def send(self, run: pb.Run) -> bool:
        """Write ``run`` to the actor's process (or queue it behind BUFFER_AFTER calls out); False
        (and the channel is dead) if it can't be."""
        data = encode(run)
        with self._lock:
            if not self.alive:
                return False
            if self.ordered and self._out >= BUFFER_AFTER:
                self._unsent.append(data)
                return True
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(data)
            except OSError:
                self._lost_locked()
                return False
            self._out += 1
        return True

    def flush(self) -> None:
        """Write the calls waiting to leave now (before a cancel: it must find them at the actor)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._unsent or not self.alive or self._sock is None:
            return
        data, count = b"".join(self._unsent), len(self._unsent)
        self._unsent.clear()
        try:
            self._sock.sendall(data)
        except OSError:
            self._lost_locked()
            return
        self._out += count

    def close(self) -> None:
        with self._lock:
            self._lost_locked()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._address)
            sock.sendall(frame(self._token))
        except OSError:
            sock.close()
            raise
        threading.Thread(target=self._read, args=(sock,), daemon=True, name="starburst-direct").start()
        return sock

    def _read(self, sock: socket.socket) -> None:
        try:
            for data in iter_frames(sock):
                self._on_done(self, pb.TaskDone.FromString(data))
                with self._lock:  # an answer: one call less out, and those waiting may leave
                    self._out = max(0, self._out - 1)
                    self._flush_locked()
        finally:
            sock.close()
            with self._lock:
                self._lost_locked()
            self._on_lost(self)

    def _lost_locked(self) -> None:
        self.alive = False
        self._unsent.clear()  # (in ``inflight`` still: reported to the head as not answered)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which reports the loss
            except OSError:
                pass
