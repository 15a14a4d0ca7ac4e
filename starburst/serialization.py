"""Values to bytes and back: cloudpickle, pickle protocol 5, out-of-band buffers.

The serialized form is one contiguous layout, the same inline and in the object store::

    b"SBV1" | u32 nbuffers | u64 pickle_len | nbuffers x u64 buffer_len | pad | pickle | pad | buf0 | pad | buf1 ...

Buffers start on 64-byte boundaries, so a memory-mapped object yields aligned, zero-copy numpy arrays.
Deserializing from a read-only memoryview gives read-only arrays (as Ray does).
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
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


#: Types that pickle the same with the standard pickler as with cloudpickle (no code, no buffers,
#: no refs inside), without cloudpickle's per-call setup: most arguments and results are these.
_PLAIN = frozenset({int, float, bool, str, bytes, type(None)})


def _plain(value: Any, depth: int = 2) -> bool:
    """Whether ``value`` is a builtin scalar, or a small tuple, list or str-keyed dict of such
    (nested at most ``depth`` deep, e.g. a call's ``(args, kwargs)``)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind not in (tuple, list, dict) or not depth or len(value) > 16:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth - 1) for k, v in value.items())
    return all(_plain(v, depth - 1) for v in value)


def serialize(value: Any) -> Serialized:
    """Serialize ``value``; records the ids of ObjectRefs found inside it."""
    if _plain(value):
        pickled = pickle.dumps(value, protocol=5)
        header = _HEAD.pack(MAGIC, 0, len(pickled))
        return Serialized(header + bytes(_pad(len(header))), pickled, [])
    buffers: list[memoryview] = []
    contained: list[bytes] = []
    ship_user_modules()
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


def pickle_exception_classes(retry: Any) -> bytes:
    """``retry_exceptions`` for the wire: ``True``, or a tuple of classes pickled by value when their
    module can't be imported by the workers (a class defined in the script, ``__main__``). Pickled
    once per set of classes, not per ``.remote()``."""
    return _pickled_classes(True if retry is True else tuple(retry))


@functools.lru_cache(maxsize=64)
def _pickled_classes(retry: Any) -> bytes:
    ship_user_modules()
    return cloudpickle.dumps(retry, protocol=5)


def dumps_function(fn: Any) -> bytes:
    ship_user_modules()
    return cloudpickle.dumps(fn, protocol=5)


_installed_roots: tuple[str, ...] | None = None
_checked_modules: set[str] = set()
_modules_seen = 0


def _installed() -> tuple[str, ...]:
    global _installed_roots
    if _installed_roots is None:
        import site
        import sysconfig

        roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
        roots.add(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
        roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + "starburst")
        _installed_roots = tuple(os.path.abspath(r) + os.sep for r in roots if r)
    return _installed_roots


def ship_user_modules() -> None:
    """The user's own modules (not installed: a script's helpers, a test file, a notebook's module)
    are pickled by value, so workers need not be able to import them. Installed packages travel by
    reference (the workers have them)."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return
    _modules_seen = len(sys.modules)
    for name, module in list(sys.modules.items()):
        if name in _checked_modules or module is None:
            continue
        _checked_modules.add(name)
        path = getattr(module, "__file__", None)
        if not path or name == "__main__" or name.startswith("starburst"):
            continue
        path = os.path.abspath(path)
        if path.startswith(_installed()) or "site-packages" in path or "dist-packages" in path:
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except (ValueError, TypeError):
            pass


def find_unpicklable(value: Any) -> str | None:
    """Why ``value`` can't be pickled (for error messages); None when it can."""
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:  # noqa: BLE001 - we report whatever pickling raised
        return f"{type(exc).__name__}: {exc}"
    return None
