"""Writing files so that readers see the old content or the new, never a half-written file."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable


def write_atomic(path: str | os.PathLike, chunks: Iterable[bytes | memoryview], *, fsync: bool = False) -> None:
    """Write ``chunks`` to ``path`` through a temporary file in the same directory, then rename it
    into place. The file is 0600 from the moment it exists; on failure nothing is left behind."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    view = view[f.write(view) :]
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
