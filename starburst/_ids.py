"""The id scheme, in one place.

- A task id (and an actor id) is :data:`TASK_ID_BYTES` bytes: 8 random bytes per process, then an
  8-byte counter, so ids are unique across processes without a syscall or a round trip.
- An object id is the id of the task that makes it plus a 4-byte little-endian slot: returns are
  slots ``1..n``, the ``i``-th item a streaming generator yields is slot ``i + 2``, and a ``put`` is
  a fresh id with slot :data:`PUT_SLOT`. So ``.remote()`` returns refs before the head has seen the
  task, and an object id names the task that made it (:func:`task_of`).
"""

from __future__ import annotations

import itertools
import os
import struct

TASK_ID_BYTES = 16
PUT_SLOT = 0xFFFFFFFF

_prefix = os.urandom(8)
_counter = itertools.count(1)


def new_id() -> bytes:
    """A fresh task (or actor) id."""
    return _prefix + next(_counter).to_bytes(8, "little")


def reseed() -> None:
    """New random bytes for this process's ids (after a fork, whose child would repeat them)."""
    global _prefix, _counter
    _prefix, _counter = os.urandom(8), itertools.count(1)


def object_id(task_id: bytes, slot: int) -> bytes:
    """The id of a task's object in ``slot``."""
    return task_id + struct.pack("<I", slot)


def return_ids(task_id: bytes, n: int) -> list[bytes]:
    """The ids of a task's ``n`` return values (slots 1..n)."""
    return [object_id(task_id, i + 1) for i in range(n)]


def item_id(task_id: bytes, index: int) -> bytes:
    """The id of the ``index``-th value a streaming generator task yields."""
    return object_id(task_id, index + 2)


def item_index(object_id: bytes) -> int:
    """The inverse of :func:`item_id`: which yielded value ``object_id`` is."""
    return struct.unpack_from("<I", object_id, TASK_ID_BYTES)[0] - 2


def put_id() -> bytes:
    """A fresh id for a ``put`` value (no task makes it)."""
    return object_id(new_id(), PUT_SLOT)


def task_of(object_id: bytes) -> bytes:
    """The id of the task that makes ``object_id``."""
    return object_id[:TASK_ID_BYTES]
