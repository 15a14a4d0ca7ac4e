"""The local node's store: one file per object in a memory-backed directory, read via mmap.

Beyond a cap on the memory-backed file system (``$STARBURST_OBJECT_STORE_BYTES``, default 30% of
RAM, like Ray's), or when it is full, objects are written to a spill directory on disk instead
(named in the store directory's ``.spill`` file); readers look there when an object is not in
memory and map it from disk. Only when the disk is full too does a put fail, with
:class:`ObjectStoreFullError` and advice.

Deleted objects' files are reused by later puts (in ``.free/``, up to RECYCLE_BYTES): their pages
are in memory already, so a put costs a copy, where a new file costs a copy plus a fresh zeroed
page per 4 KiB (a 128 MiB put took ~55 ms here, ~25 ms into a reused file). A file is reused only if
nobody maps it: every reader holds a shared ``flock`` on it through its mapping's own descriptor
(``mmap`` keeps a duplicate of the file descriptor, and the lock goes with it until the mapping is
freed), and a delete moves the file to ``.free/`` only if it gets the exclusive lock at once.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import shutil
import time

from .. import config
from .._files import write_atomic
from ..exceptions import ObjectStoreFullError
from ..serialization import Serialized
from .base import ObjectStore

SPILL_FILE = config.SPILL_FILE
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Deleted objects' files kept for reuse (see the module docstring): at most this many bytes, and
#: only files at least RECYCLE_MIN_BYTES long (smaller values travel inline anyway).
RECYCLE_BYTES = 1 << 30
RECYCLE_MIN_BYTES = 1 << 20
#: A kept file not reused for this long is given back (``release_unused``, from the head's tick).
RECYCLE_KEEP_S = 10.0
FREE_DIR = ".free"
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: the page tables are filled in one call


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
        spilled = False
        if spill and not self._fits_in_memory(value.size):
            self._drop_recycled()  # memory held for reuse goes first
            if not self._fits_in_memory(value.size):
                path, spilled = os.path.join(spill, key), True
        if not spilled and value.size >= RECYCLE_MIN_BYTES and self._put_recycled(path, value):
            return
        error = self._write(path, value)
        if error is not None and not spilled and self._recycled():  # kept for reuse: given back first
            self._drop_recycled()
            error = self._write(path, value)
        if error is None:
            return
        if not spill or spilled:
            raise self._full(value.size, error)
        error = self._write(os.path.join(spill, key), value)
        if error is not None:
            raise self._full(value.size, error)

    @staticmethod
    def _write(path: str, value: Serialized) -> OSError | None:
        """Write a new file; the error if the file system is full (others are raised)."""
        try:
            write_atomic(path, value.chunks())
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            return exc
        return None

    def _full(self, size: int, exc: OSError) -> ObjectStoreFullError:
        where = self.directory + (f" and its spill directory {self.spill_directory}" if self.spill_directory else "")
        return ObjectStoreFullError(
            f"the object store is full: no room for {size} bytes in {where} ({exc.strerror}). Free space by "
            "letting go of ObjectRefs you no longer need (del ref), or free disk space; "
            "STARBURST_SHM_DIR puts the store on another file system.")

    def get(self, key: str) -> memoryview:
        for _ in range(3):
            path = self._path(key)
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                if not self.spill_directory:
                    raise
                path = os.path.join(self.spill_directory, key)
                f = open(path, "rb")
            with f:
                fd = f.fileno()
                st = os.fstat(fd)
                if st.st_size == 0:
                    return memoryview(b"")
                if st.st_size < RECYCLE_MIN_BYTES:  # never reused: no lock needed
                    return memoryview(mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ))
                # Held through the mapping's duplicate of fd for as long as the mapping lives.
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.stat(path).st_ino == st.st_ino:  # (else it was moved away as we opened it)
                    return memoryview(mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ))
        raise FileNotFoundError(errno.ENOENT, "the object's file kept changing while it was read", key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self._recycle(path):
            return
        for directory in (self.directory, self.spill_directory):
            if directory:
                try:
                    os.unlink(os.path.join(directory, key) if directory != self.directory else path)
                except FileNotFoundError:
                    pass

    # -- reusing deleted objects' files --------------------------------------------------------

    def _free_directory(self) -> str:
        return os.path.join(self.directory, FREE_DIR)

    def _recycled(self) -> list[tuple[int, str]]:
        """(size, path) of the files kept for reuse."""
        try:
            entries = list(os.scandir(self._free_directory()))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            size, _, _ = entry.name.partition(".")
            if size.isdigit():
                out.append((int(size), entry.path))
        return out

    def _recycle(self, path: str) -> bool:
        """Move the deleted object's file to the reuse pool if nobody maps it and there is room;
        True if it was moved."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            limit = min(RECYCLE_BYTES, self._cap // 4)
            if size < RECYCLE_MIN_BYTES or sum(s for s, _ in self._recycled()) + size > limit:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a reader maps it: it goes when they let go of it (unlinked now)
                return False
            os.makedirs(self._free_directory(), mode=0o700, exist_ok=True)
            os.rename(path, os.path.join(self._free_directory(), f"{size}.{secrets.token_hex(8)}"))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def _put_recycled(self, path: str, value: Serialized) -> bool:
        """Write ``value`` into a file from the reuse pool (the closest in size); False if none."""
        size = value.size
        pool = self._recycled()
        if not pool:
            return False
        larger = [f for f in pool if f[0] >= size]
        candidates = sorted(larger) if larger else sorted(pool, reverse=True)
        for free_size, free in candidates:
            tmp = os.path.join(self.directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
            try:
                os.rename(free, tmp)  # ours alone from here (another put may have taken it first)
            except FileNotFoundError:
                continue
            try:
                fd = os.open(tmp, os.O_RDWR)
                try:
                    if free_size >= size:  # every page exists: map them in one go and copy
                        os.ftruncate(fd, size)
                        with mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE,
                                       prot=mmap.PROT_READ | mmap.PROT_WRITE) as m:
                            offset = 0
                            for chunk in value.chunks():
                                view = memoryview(chunk).cast("B")
                                m[offset:offset + len(view)] = view
                                offset += len(view)
                    else:
                        for chunk in value.chunks():
                            view = memoryview(chunk).cast("B")
                            while view:
                                view = view[os.write(fd, view):]
                        os.ftruncate(fd, size)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                return True
            except OSError as exc:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                if exc.errno in _FULL:
                    return False  # written the usual way (or spilled) instead
                raise
        return False

    def _drop_recycled(self, kept_since: float | None = None) -> None:
        """Unlink the files kept for reuse (only those kept since before ``kept_since``, a time)."""
        for _, free in self._recycled():
            try:
                if kept_since is None or os.stat(free).st_ctime < kept_since:  # (a rename sets ctime)
                    os.unlink(free)
            except FileNotFoundError:
                pass

    def release_unused(self) -> None:
        self._drop_recycled(kept_since=time.time() - RECYCLE_KEEP_S)

    def destroy(self) -> None:
        if self.spill_directory:
            shutil.rmtree(self.spill_directory, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)
