"""A first-in, first-out queue shared between the driver, tasks and actors (``ray.util.queue``).

The items live in an async actor (:class:`_QueueActor`); a :class:`Queue` object is a thin client
around its handle, so it can be passed to tasks and actors like any argument and they all see the
same queue. Semantics follow Ray 2.x:

- ``put``/``get`` block by default; ``block=False`` (or ``put_nowait``/``get_nowait``) raises
  :class:`Full`/:class:`Empty` at once; a ``timeout`` raises them when it passes. A negative
  timeout is a ``ValueError``.
- :class:`Empty` and :class:`Full` subclass the standard library's ``queue.Empty``/``queue.Full``,
  so code written against ``queue.Queue`` catches them unchanged.
- ``put_nowait_batch`` puts all items or none (``Full`` if they don't all fit);
  ``get_nowait_batch(n)`` takes exactly ``n`` items or none (``Empty``).
- ``put_async``/``get_async`` are coroutines for use inside async code (async actors, asyncio).
- ``maxsize <= 0`` means unbounded. ``actor_options`` are passed to the actor's ``.options()``.

Unlike Ray, the queue's actor asks for 0 CPUs by default (Ray's actors hold no CPU once running
either), so an idle queue never takes a CPU slot from tasks; pass ``actor_options={"num_cpus": 1}``
to reserve one.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from ..options import check_timeout


class Empty(_stdlib_queue.Empty):
    """The queue has no item (``get`` without blocking, or after ``timeout``)."""


class Full(_stdlib_queue.Full):
    """The queue is at ``maxsize`` (``put`` without blocking, or after ``timeout``)."""


class Queue:
    """A FIFO queue held by an actor, usable from anywhere in the cluster.

    Args:
        maxsize: the most items the queue holds; ``0`` (default) or less means unbounded.
        actor_options: options for the queue's actor, passed to ``.options()`` (e.g. ``name``,
            ``namespace``, ``lifetime``, ``num_cpus``).

    Example::

        q = Queue(maxsize=100)

        @starburst.remote
        def consumer(q):
            got = []
            while True:
                try:
                    got.append(q.get(timeout=1))
                except Empty:
                    return got

        for i in range(10):
            q.put(i)
        print(starburst.get(consumer.remote(q)))
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        import starburst

        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        self.maxsize = maxsize
        options = {"num_cpus": 0}
        options.update(actor_options or {})
        self.actor = starburst.remote(_QueueActor).options(**options).remote(self.maxsize)

    # A Queue pickles as its maxsize and actor handle: every copy talks to the same actor.
    def __getstate__(self) -> dict:
        return {"maxsize": self.maxsize, "actor": self.actor}

    def __setstate__(self, state: dict) -> None:
        self.maxsize = state["maxsize"]
        self.actor = state["actor"]

    def _actor(self) -> Any:
        if self.actor is None:
            raise RuntimeError("this Queue was shut down")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        import starburst

        return starburst.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue (same as :meth:`size`)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue has no item."""
        import starburst

        return starburst.get(self._actor().empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, when unbounded)."""
        import starburst

        return starburst.get(self._actor().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item`` at the end. If the queue is full: wait (``block=True``, up to ``timeout``
        seconds, ``None`` forever) or raise :class:`Full` (``block=False``, or on timeout)."""
        import starburst

        if not block:
            ref = self._actor().put_nowait.remote(item)
        else:
            check_timeout(timeout)
            ref = self._actor().put.remote(item, timeout)
        _unwrap(starburst.get, ref)

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """:meth:`put` as a coroutine: awaits instead of blocking the thread."""
        if not block:
            ref = self._actor().put_nowait.remote(item)
        else:
            check_timeout(timeout)
            ref = self._actor().put.remote(item, timeout)
        await _unwrap_async(ref)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the first item. If the queue is empty: wait (``block=True``, up to
        ``timeout`` seconds, ``None`` forever) or raise :class:`Empty` (``block=False``, or on
        timeout)."""
        import starburst

        if not block:
            ref = self._actor().get_nowait.remote()
        else:
            check_timeout(timeout)
            ref = self._actor().get.remote(timeout)
        return _unwrap(starburst.get, ref)

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """:meth:`get` as a coroutine: awaits instead of blocking the thread."""
        if not block:
            ref = self._actor().get_nowait.remote()
        else:
            check_timeout(timeout)
            ref = self._actor().get.remote(timeout)
        return await _unwrap_async(ref)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``: raises :class:`Full` if the queue is full."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Put all of ``items`` in order, or none of them: raises :class:`Full` if they don't fit."""
        import starburst

        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _unwrap(starburst.get, self._actor().put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """``get(block=False)``: raises :class:`Empty` if the queue is empty."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return exactly ``num_items`` items, in order, or none: raises :class:`Empty`
        if the queue holds fewer."""
        import starburst

        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(starburst.get, self._actor().get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Stop the queue's actor; its items are lost and this Queue (and its copies) stop working.

        starburst kills the actor at once in both cases: calls already queued on it fail.
        ``force`` and ``grace_period_s`` are accepted for Ray compatibility.
        """
        import starburst

        if self.actor is not None:
            try:
                starburst.kill(self.actor, no_restart=True)
            finally:
                self.actor = None


def _reraise_clean(exc: BaseException) -> None:
    """A remote Empty/Full arrives as a task error that is also an Empty/Full; raise a plain one."""
    for cls in (Empty, Full):
        if isinstance(exc, cls):
            cause = getattr(exc, "cause", None)
            message = str(cause) if cause is not None else ""
            raise cls(message) from None


def _unwrap(get: Any, ref: Any) -> Any:
    try:
        return get(ref)
    except (Empty, Full) as exc:
        _reraise_clean(exc)
        raise


async def _unwrap_async(ref: Any) -> Any:
    try:
        return await ref
    except (Empty, Full) as exc:
        _reraise_clean(exc)
        raise


class _QueueActor:
    """The actor that holds a Queue's items: an asyncio.Queue on the actor's event loop, so blocked
    gets and puts wait there without holding up other calls."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize if maxsize > 0 else 0)

    async def qsize(self) -> int:
        return self.queue.qsize()

    async def empty(self) -> bool:
        return self.queue.empty()

    async def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full (maxsize {self.maxsize}) for {timeout} s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    async def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    async def put_nowait_batch(self, items: list) -> None:
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                       f"and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)

    async def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    async def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.queue.qsize()}.")
        return [self.queue.get_nowait() for _ in range(num_items)]
