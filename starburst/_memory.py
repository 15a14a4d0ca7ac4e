"""Giving freed memory back to the operating system."""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    # The process's own symbols include the C library's (``find_library`` would run ``ldconfig -p``
    # in a subprocess at every process's start).
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim() -> None:
    """Return free heap memory to the OS (glibc's ``malloc_trim``; nothing elsewhere). Large blocks
    freed in the middle of the heap (a dropped multi-megabyte function) otherwise stay resident."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


#: Blocks at least this large get their own mapping, returned to the OS the moment they are freed.
#: (glibc's threshold otherwise rises to the largest block freed, up to 32 MiB: a process that once
#: handled an 8 MiB function would keep every later one's memory in its heap.)
LARGE_BLOCK_BYTES = 4 << 20
#: Free memory at the top of a heap is given back once it exceeds this. Setting the mmap threshold
#: leaves glibc's default of 128 KiB here, and every ``socket.recv`` (asyncio asks for 256 KiB, then
#: shrinks the buffer to what arrived) would then grow and shrink the heap: two system calls and
#: fresh zeroed pages per read, ~1 per task in the node. ``trim()`` still gives all of it back.
TRIM_THRESHOLD_BYTES = 4 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def return_large_blocks() -> None:
    """Call once at process start (head, node, executor): large blocks are unmapped when freed, and
    the heap is not shrunk for every freed read buffer."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
