"""The head's function table: the pickled functions sessions sent, bounded by bytes (least recently
used first) and freed in step with the sessions that sent them and the nodes that got them.

A function is kept while a session may still submit tasks naming it without sending it again (the
session is a *holder*: it sent it and has not released it) or an unfinished task or live actor uses
it. A session releases a function when its driver drops the function, or when the head asks it to
(``forget``: the table is over its byte budget); after the release it sends the function again
before naming it. Once nobody holds or uses a function it is dropped, and every node that had it is
told to drop it too (nodes tell their executors): no task still at a node can need it, because
every such task is unfinished and so counts as a user.

No I/O here: ``forget`` and ``dropped`` are callbacks the scheduler provides.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Generic, TypeVar

from .._proto import starburst_pb2 as pb

#: Bytes of pickled functions the head keeps that no task uses (beyond that, the least recently used
#: are asked back from their sessions). Functions in use are never dropped, whatever their size.
FUNCTION_CACHE_BYTES = int(os.environ.get("STARBURST_FUNCTION_CACHE_BYTES", 256 << 20))

S = TypeVar("S")  # a session


class _Entry(Generic[S]):
    __slots__ = ("id", "function", "size", "holders", "users", "asked")

    def __init__(self, function: pb.Function) -> None:
        self.id: bytes = function.id  # the table's key: tasks share this object (see ``use``)
        self.function = function
        self.size = function.ByteSize()
        self.holders: set[S] = set()
        self.users = 0
        self.asked = False  # its holders were asked to release it (the table is over budget)


class FunctionTable(Generic[S]):
    def __init__(self, forget: Callable[[S, bytes], None], dropped: Callable[[bytes], None],
                 budget: int = FUNCTION_CACHE_BYTES) -> None:
        self._forget = forget
        self._dropped = dropped
        self.budget = budget
        self.entries: collections.OrderedDict[bytes, _Entry[S]] = collections.OrderedDict()
        self.bytes = 0  # of every entry
        self._asked_bytes = 0  # of entries asked back and not dropped yet

    def __contains__(self, function_id: bytes) -> bool:
        return function_id in self.entries

    def get(self, function_id: bytes) -> pb.Function:
        return self.entries[function_id].function

    def add(self, session: S, function: pb.Function) -> None:
        """``session`` sent ``function``: it holds it until it releases it."""
        entry = self.entries.get(function.id)
        if entry is None:
            entry = _Entry(function)
            self.entries[entry.id] = entry
            self.bytes += entry.size
        elif entry.asked:  # sent again after a release: a new holder, not asked yet
            entry.asked = False
            self._asked_bytes -= entry.size
        entry.holders.add(session)
        self.entries.move_to_end(function.id)
        self._shrink()

    def use(self, function_id: bytes) -> bytes | None:
        """A task (or a live actor) uses the function: the table's own copy of its id (one bytes
        object for all its users, however many are held), or None if the table doesn't have it."""
        entry = self.entries.get(function_id)
        if entry is None:
            return None
        entry.users += 1
        self.entries.move_to_end(function_id)
        return entry.id

    def unuse(self, function_id: bytes) -> None:
        """A user counted by ``use`` is done with it."""
        entry = self.entries.get(function_id)
        if entry is not None:
            entry.users -= 1
            if entry.users <= 0:  # only an unused function may be dropped or asked back
                self._maybe_drop(function_id, entry)
                self._shrink()

    def release(self, session: S, function_id: bytes) -> None:
        """``session`` will send the function again before naming it in a task."""
        entry = self.entries.get(function_id)
        if entry is not None:
            entry.holders.discard(session)
            self._maybe_drop(function_id, entry)

    def close(self, session: S) -> None:
        """The session ended: it holds nothing."""
        for function_id, entry in list(self.entries.items()):
            if session in entry.holders:
                entry.holders.discard(session)
                self._maybe_drop(function_id, entry)

    def _maybe_drop(self, function_id: bytes, entry: _Entry[S]) -> None:
        if entry.holders or entry.users > 0:
            return
        del self.entries[function_id]
        self.bytes -= entry.size
        if entry.asked:
            self._asked_bytes -= entry.size
        self._dropped(function_id)

    def _shrink(self) -> None:
        """Over budget: ask the holders of the least recently used unused functions to release them."""
        if self.bytes - self._asked_bytes <= self.budget:
            return
        for function_id, entry in list(self.entries.items()):
            if self.bytes - self._asked_bytes <= self.budget:
                break
            if entry.users > 0 or entry.asked:
                continue
            entry.asked = True
            self._asked_bytes += entry.size
            if not entry.holders:
                self._maybe_drop(function_id, entry)
            for session in list(entry.holders):
                self._forget(session, function_id)
