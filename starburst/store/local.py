"""The local node's store: one file per object in a memory-backed directory, read via mmap.

Beyond a cap on the memory-backed file system (``$STARBURST_OBJECT_STORE_BYTES``, default 30% of
RAM, like Ray's), or when it is full, objects are written to a spill directory on disk instead
(named in the store directory's ``.spill`` file); readers look there when an object is not in
memory and map it from disk. Only when the disk is full too does a put fail, with
:class:`ObjectStoreFullError` and advice.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil

from .. import config
from .._files import write_atomic
from ..exceptions import ObjectStoreFullError
from ..serialization import Serialized
from .base import ObjectStore

SPILL_FILE = config.SPILL_FILE
_FULL = (errno.ENOSPC, errno.EDQUOT)


def store_cap() -> int:
    """Bytes the memory-backed file system may hold before objects spill to disk."""
    override = os.environ.get("STARBURST_OBJECT_STORE_BYTES")
    if override:
        return int(override)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.3)
    except (ValueError, OSError):
        return 1 << 62


class LocalStore(ObjectStore):
    """Files under ``directory`` (normally ``/dev/shm/starburst-<cluster>``).

    ``get`` maps the file read-only, so numpy arrays deserialized from it share the pages with every
    other reader on the machine. Deleting unlinks the file; existing mappings stay valid until dropped.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.url = "file://" + directory
        self._spill: str | None = None
        self._cap = store_cap()

    @property
    def spill_directory(self) -> str:
        """The disk directory objects spill to ("" when the store itself is on disk)."""
        if self._spill is None:
            try:
                with open(os.path.join(self.directory, SPILL_FILE)) as f:
                    self._spill = f.read().strip()
            except OSError:
                self._spill = ""
        return self._spill

    def _path(self, key: str) -> str:
        if "/" in key or key.startswith("."):
            raise ValueError(f"bad object key {key!r}")
        return os.path.join(self.directory, key)

    def _fits_in_memory(self, size: int) -> bool:
        st = os.statvfs(self.directory)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return used + size <= self._cap and size < st.f_bavail * st.f_frsize

    def put(self, key: str, value: Serialized) -> None:
        path = self._path(key)
        spill = self.spill_directory
        if spill and not self._fits_in_memory(value.size):
            path = os.path.join(spill, key)
        try:
            write_atomic(path, value.chunks())
            return
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            if not spill or path.startswith(spill + os.sep):
                raise self._full(value.size, exc) from None
        try:
            write_atomic(os.path.join(spill, key), value.chunks())
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            raise self._full(value.size, exc) from None

    def _full(self, size: int, exc: OSError) -> ObjectStoreFullError:
        where = self.directory + (f" and its spill directory {self.spill_directory}" if self.spill_directory else "")
        return ObjectStoreFullError(
            f"the object store is full: no room for {size} bytes in {where} ({exc.strerror}). Free space by "
            "letting go of ObjectRefs you no longer need (del ref), or free disk space; "
            "STARBURST_SHM_DIR puts the store on another file system.")

    def get(self, key: str) -> memoryview:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            if not self.spill_directory:
                raise
            f = open(os.path.join(self.spill_directory, key), "rb")
        with f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))

    def delete(self, key: str) -> None:
        for directory in (self.directory, self.spill_directory):
            if directory:
                try:
                    os.unlink(os.path.join(directory, key) if directory != self.directory else self._path(key))
                except FileNotFoundError:
                    pass

    def destroy(self) -> None:
        if self.spill_directory:
            shutil.rmtree(self.spill_directory, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
