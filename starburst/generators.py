"""Generator tasks: ``num_returns="streaming"`` (an ObjectRefGenerator, items as they are yielded)
and Ray's deprecated ``num_returns="dynamic"`` (one ref to a DynamicObjectRefGenerator)."""

from __future__ import annotations

from typing import Any, Iterator

from .object_ref import ObjectRef


def item_id(task_id: bytes, index: int) -> bytes:
    """The object id of the ``index``-th value a streaming task yields."""
    from .remote_function import object_id

    return object_id(task_id, index + 2)


class ObjectRefGenerator:
    """Iterate over the refs of a streaming generator task's items, each as soon as it is yielded.

    If the task raises, the iteration yields one more ref, whose ``get`` raises the error.
    """

    def __init__(self, task_id: bytes, end: ObjectRef, client: Any) -> None:
        client.register_stream(task_id)
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
        if not client.has_value(oid):
            count, error = client.peek_count(self._end._id)
            if error:
                self._finish()
                return self._end  # get() on it raises the task's error
            if count is not None and self._next >= count:
                self._finish()
                return None
            client.wait_any([oid], timeout)  # items always precede the end: it is on its way
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

    def completed(self) -> ObjectRef:
        """A ref that is ready once the task has finished (its value: the number of items)."""
        return self._end

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: iterate for the refs of what it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = refs

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)
