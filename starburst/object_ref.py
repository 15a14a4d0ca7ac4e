"""ObjectRef: a handle to a value that exists, or will exist, somewhere in the cluster."""

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING, Any, Generator

from . import _ids, _runtime
from .serialization import note_contained_ref

if TYPE_CHECKING:
    import asyncio


#: The id of the nil ref: no object has it.
NIL_ID = bytes(20)


class ObjectRef:
    """A reference to a remote value, as returned by ``f.remote()`` and ``put()``.

    Hashable and comparable by id; awaitable in asyncio code (``await ref``); ``future()`` gives a
    ``concurrent.futures.Future``. While any ObjectRef to a value exists in any process, the value is
    kept; once the last one is gone the cluster frees it.
    """

    __slots__ = ("_id", "_client", "__weakref__")

    def __init__(self, object_id: bytes, client: Any = None, *, borrowed: bool = False) -> None:
        self._id = object_id
        self._client = client
        if client is not None:
            client.incref(object_id, borrowed=borrowed)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.decref(self._id)
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> bytes:
        return _ids.task_of(self._id)

    def is_nil(self) -> bool:
        """True for the nil ref (what ``ObjectRefGenerator._next_sync`` returns on a timeout)."""
        return self._id == NIL_ID

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: "ObjectRef") -> bool:
        return self._id < other._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        note_contained_ref(self._id)
        return (_rebuild_ref, (self._id,))

    def __copy__(self) -> "ObjectRef":
        return self

    def __deepcopy__(self, memo: dict) -> "ObjectRef":
        return self

    def future(self) -> concurrent.futures.Future:
        """A Future that completes with the value (or the task's exception)."""
        client = self._client or _runtime.get_client()
        return client.future(self)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.as_future().__await__()

    def as_future(self) -> "asyncio.Future[Any]":
        """An asyncio future for the value, bound to the running event loop."""
        import asyncio

        return asyncio.wrap_future(self.future())


def _rebuild_ref(object_id: bytes) -> ObjectRef:
    return ObjectRef(object_id, _runtime.get_client_for_ref(), borrowed=True)
