"""Values to bytes and back: cloudpickle, pickle protocol 5, out-of-band buffers.

The serialized form is one contiguous layout, the same inline and in the object store::

    b"SBV1" | u32 nbuffers | u64 pickle_len | nbuffers x u64 buffer_len | pad | pickle | pad | buf0 | pad | buf1 ...

Buffers start on 64-byte boundaries, so a memory-mapped object yields aligned, zero-copy numpy arrays.
Deserializing from a read-only memoryview gives read-only arrays (as Ray does).
"""

from __future__ import annotations

import io
import pickle
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

MAGIC = b"SBV1"
ALIGN = 64
_HEAD = struct.Struct("<4sIQ")

_context = threading.local()


def _pad(n: int) -> int:
    return (-n) % ALIGN


@dataclass
class Serialized:
    """A value in serialized form: a header, the pickle stream and its out-of-band buffers."""

    header: bytes
    pickled: bytes
    buffers: list[memoryview]
    contained: list[bytes] = field(default_factory=list)  # ids of ObjectRefs pickled inside

    @property
    def size(self) -> int:
        return len(self.header) + self._body_size()

    def _body_size(self) -> int:
        n = len(self.pickled) + _pad(len(self.pickled))
        for b in self.buffers:
            n += b.nbytes + _pad(b.nbytes)
        return n

    def chunks(self):
        """The pieces of the layout in order (header and padding included)."""
        yield self.header
        yield self.pickled
        yield bytes(_pad(len(self.pickled)))
        for b in self.buffers:
            yield b
            pad = _pad(b.nbytes)
            if pad:
                yield bytes(pad)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        for chunk in self.chunks():
            out.write(chunk)
        return out.getvalue()


def serialize(value: Any) -> Serialized:
    """Serialize ``value``; records the ids of ObjectRefs found inside it."""
    buffers: list[memoryview] = []
    contained: list[bytes] = []
    previous = getattr(_context, "contained", None)
    _context.contained = contained
    try:
        pickled = cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: buffers.append(b.raw()))
    finally:
        _context.contained = previous
    header = _HEAD.pack(MAGIC, len(buffers), len(pickled)) + b"".join(
        struct.pack("<Q", b.nbytes) for b in buffers
    )
    header += bytes(_pad(len(header)))
    return Serialized(header, pickled, buffers, contained)


def note_contained_ref(object_id: bytes) -> None:
    """Called by ObjectRef.__reduce__: remember that the value being serialized holds this ref."""
    contained = getattr(_context, "contained", None)
    if contained is not None:
        contained.append(object_id)


def deserialize(data: bytes | memoryview) -> Any:
    """Rebuild a value from its serialized layout; buffers are views into ``data`` (no copy)."""
    view = memoryview(data)
    magic, nbuf, pickle_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a starburst serialized value")
    offset = _HEAD.size
    lengths = struct.unpack_from(f"<{nbuf}Q", view, offset)
    offset += 8 * nbuf
    offset += _pad(offset)
    pickled = view[offset : offset + pickle_len]
    offset += pickle_len + _pad(pickle_len)
    buffers = []
    for length in lengths:
        buffers.append(view[offset : offset + length])
        offset += length + _pad(length)
    return pickle.loads(pickled, buffers=buffers)


def dumps_function(fn: Any) -> bytes:
    return cloudpickle.dumps(fn, protocol=5)


def find_unpicklable(value: Any) -> str:
    """A short description of why ``value`` can't be pickled (for error messages)."""
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:  # noqa: BLE001 - we report whatever pickling raised
        return f"{type(exc).__name__}: {exc}"
    return "it pickles on its own"
