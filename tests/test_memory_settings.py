"""The allocator settings every cluster process starts with (``starburst._memory``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# 300 reads like asyncio's (recv() asks for a large buffer, 256 KiB there, and the bytes object is
# shrunk to what arrived), all kept alive; prints the page faults they took. The buffer here is 1 MiB,
# so that what the shrink frees at the heap's top is past glibc's default trim threshold whatever
# the process's heap looked like before (with 256 KiB that depends on the layout).
_READS = """
import ctypes, resource, socket, sys
from starburst import _memory
if sys.argv[1] == "ours":
    _memory.return_large_blocks()
else:  # the mmap threshold alone (what the processes set before)
    ctypes.CDLL(None).mallopt(-3, _memory.LARGE_BLOCK_BYTES)
a, b = socket.socketpair()
def read():
    a.send(b"x" * 100)
    return b.recv(1 << 20)
for _ in range(20):
    read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept = [read() for _ in range(300)]
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(settings: str) -> int:
    out = subprocess.run([sys.executable, "-c", _READS, settings], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_socket_reads_do_not_take_fresh_pages_each_time():
    """With only the mmap threshold set, glibc gives the heap's top back to the OS after every
    shrunk read buffer (the trim threshold stays at 128 KiB) and faults fresh zeroed pages in for
    the next read: in the node that was a grow and a shrink of the heap per task."""
    assert _faults("mmap-threshold-only") >= 250  # the reads as they were: a fault (or more) each
    assert _faults("ours") < 50
