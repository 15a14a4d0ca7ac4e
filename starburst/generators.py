"""Generator tasks: ``num_returns="streaming"`` (an ObjectRefGenerator, items as they are yielded)
and Ray's deprecated ``num_returns="dynamic"`` (one ref to a DynamicObjectRefGenerator)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from ._ids import item_id
from .object_ref import NIL_ID, ObjectRef


class ObjectRefGenerator:
    """Iterate over the refs of a streaming generator task's items, each as soon as it is yielded.

    If the task raises, the iteration yields one more ref, whose ``get`` raises the error.
    """

    def __init__(self, task_id: bytes, end: ObjectRef, client: Any) -> None:
        self._task_id = task_id
        self._end = end  # its value is the number of items, once the task has finished
        self._client = client
        self._next = 0
        self._done = False

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        ref = self._next_ref(timeout=None)
        if ref is None:
            raise StopIteration
        return ref

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_ref, None)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_ref(self, timeout: float | None) -> ObjectRef | None:
        if self._done:
            return None
        client = self._client
        oid = item_id(self._task_id, self._next)
        client.wait_any([oid, self._end._id], timeout)
        if not client.has_value(oid) and not client.has_value(self._end._id):
            return _NIL  # timed out (only with a timeout)
        if not client.has_value(oid):
            count, error = client.peek_count(self._end._id)
            if error:
                self._finish()
                return self._end  # get() on it raises the task's error
            if count is not None and self._next >= count:
                self._finish()
                return None
            client.wait_any([oid], None)  # items always precede the end: it is on its way, so no timeout
        self._next += 1
        ref = ObjectRef(oid, client)
        client.decref(oid)  # the arrival hold passes to the ref
        return ref

    def _finish(self) -> None:
        self._done = True
        self._client.unregister_stream(self._task_id)

    def __del__(self) -> None:
        client = self.__dict__.get("_client")
        if client is None or self.__dict__.get("_done"):
            return
        try:  # items that arrived but were never handed out
            client.unregister_stream(self._task_id)
            index = self._next
            while client.has_value(item_id(self._task_id, index)):
                client.decref(item_id(self._task_id, index))
                index += 1
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def _probe_ids(self) -> list[bytes]:
        """Ids whose arrival makes this generator ready for ``wait``: its next item, or its end."""
        return [item_id(self._task_id, self._next), self._end._id]

    def _is_ready(self) -> bool:
        return self._done or any(self._client.has_value(i) for i in self._probe_ids())

    def is_finished(self) -> bool:
        """True when every item has been handed out (``next`` would raise ``StopIteration``)."""
        if self._done:
            return True
        count, error = self._client.peek_count(self._end._id)
        return count is not None and self._next >= count

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        """Ray's non-blocking form: the next ref, or a nil ref (``.is_nil()``) if none came in time."""
        ref = self._next_ref(timeout=timeout_s)
        if ref is None:
            raise StopIteration
        return ref

    def completed(self) -> ObjectRef:
        """A ref that is ready once the task has finished (its value: the number of items)."""
        return self._end

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"


#: What ``_next_sync`` returns when no item came within its timeout (holds nothing).
_NIL = ObjectRef(NIL_ID)


def wait_with_generators(client: Any, items: list, num_returns: int, timeout: float | None) -> tuple[list, list]:
    """``wait`` over refs and ObjectRefGenerators, keeping the order of ``items``."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def ready(item: Any) -> bool:
        if isinstance(item, ObjectRefGenerator):
            return item._is_ready()
        return client.has_value(item._id)

    while True:
        done = [item for item in items if ready(item)]
        left = None if deadline is None else deadline - time.monotonic()
        if len(done) >= num_returns or (left is not None and left <= 0):
            break
        probes: list[bytes] = []
        done_ids = set(map(id, done))  # (membership in the list compared refs one by one: quadratic)
        for item in items:
            if id(item) not in done_ids:
                probes.extend(item._probe_ids() if isinstance(item, ObjectRefGenerator) else [item._id])
        client.wait_any(probes, left)
    chosen = set(map(id, done[:num_returns]))
    return [i for i in items if id(i) in chosen], [i for i in items if id(i) not in chosen]


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: iterate for the refs of what it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = refs

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)
