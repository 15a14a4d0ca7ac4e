"""The local node's store: one file per object in a memory-backed directory, read via mmap."""

from __future__ import annotations

import mmap
import os

from .._files import write_atomic
from ..serialization import Serialized
from .base import ObjectStore


class LocalStore(ObjectStore):
    """Files under ``directory`` (normally ``/dev/shm/starburst-<cluster>``).

    ``get`` maps the file read-only, so numpy arrays deserialized from it share the pages with every
    other reader on the machine. Deleting unlinks the file; existing mappings stay valid until dropped.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.url = "file://" + directory

    def _path(self, key: str) -> str:
        if "/" in key or key.startswith("."):
            raise ValueError(f"bad object key {key!r}")
        return os.path.join(self.directory, key)

    def put(self, key: str, value: Serialized) -> None:
        write_atomic(self._path(key), value.chunks())

    def get(self, key: str) -> memoryview:
        with open(self._path(key), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ))

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def destroy(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)
