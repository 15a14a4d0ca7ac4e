"""ActorPool: run work over a fixed set of actors, one call per actor at a time (``ray.util.ActorPool``).

Semantics follow Ray 2.x:

- ``fn(actor, value)`` submits one call and returns an ObjectRef (or a list of refs); the actor is
  busy until that call's result has been *returned by the pool* (``get_next*``), not merely until it
  finished. Values submitted while every actor is busy wait in the pool, in order, and are handed to
  the next actor that becomes idle.
- ``get_next`` returns results in submission order; ``get_next_unordered`` in completion order.
  After ``get_next_unordered`` the ordered ``get_next`` is refused (``ValueError``) until the pool
  has no pending results.
- A timed-out ``get_next*`` raises ``TimeoutError`` and keeps the task (ask again later); with
  ``ignore_if_timedout=True`` the task's result is dropped and its actor is made idle again.
- An actor whose call fails with ``ActorDiedError`` is dropped from the pool; the error is raised.
- ``map`` / ``map_unordered`` first drain (and discard) results still pending from earlier submits.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Iterable, Iterator


def _refs_of(future: Any) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]


def _key(future: Any) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _actor_died_types() -> tuple:
    from starburst import exceptions

    return (exceptions.RayActorError,)


class ActorPool:
    """A pool of actors that share out work, one call per actor at a time.

    Args:
        actors: the actor handles to use. The pool never creates or kills actors.

    Example::

        @starburst.remote
        class Doubler:
            def double(self, v):
                return 2 * v

        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        print(list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])))   # [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list = list(actors)
        # key of an in-flight future -> (submission index, actor)
        self._future_to_actor: dict = {}
        # submission index -> future (an ObjectRef or a list of them)
        self._index_to_future: dict = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: collections.deque = collections.deque()

    # -- mapping ---------------------------------------------------------------------------------

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn(actor, value)`` over ``values`` on the pool; an iterator over the results in
        the order of ``values``. Iterate it to the end: the work is only collected as you go."""
        self._discard_pending(ordered=True)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Like :meth:`map`, but yields each result as soon as it is ready (completion order)."""
        self._discard_pending(ordered=False)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _discard_pending(self, ordered: bool) -> None:
        while self.has_next():
            if not self._future_to_actor:  # submits queued on a pool with no actor left
                self._pending_submits.clear()
                break
            try:
                if ordered and self._next_return_index < self._next_task_index:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
            except Exception:  # noqa: BLE001 - a failed earlier result is discarded like a value
                pass

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor, or queue it until one is free. Collect the
        result with :meth:`get_next` or :meth:`get_next_unordered`."""
        if self._idle_actors:
            actor = self._idle_actors.pop()
            future = fn(actor, value)
            self._future_to_actor[_key(future)] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = future
            self._next_task_index += 1
        else:
            self._pending_submits.append((fn, value))

    # -- collecting ------------------------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether any submitted work has a result not yet returned."""
        return bool(self._future_to_actor) or bool(self._pending_submits)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to ``timeout`` seconds (``None``: forever).

        Raises ``StopIteration`` when nothing is pending and ``TimeoutError`` on timeout (with
        ``ignore_if_timedout=True`` the timed-out task is dropped first). A task's error is raised.
        """
        import starburst

        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            if self._future_to_actor:
                raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
            raise RuntimeError("no actor is left in the pool to run the pending submits")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            refs = _refs_of(future)
            ready, _ = starburst.wait(refs, num_returns=len(refs), timeout=timeout)
            timed_out = len(ready) < len(refs)
            if timed_out and not ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"Timed out waiting for result. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Any next result, the first to be ready, waiting up to ``timeout`` seconds.

        Raises ``StopIteration`` when nothing is pending and ``TimeoutError`` on timeout (with
        ``ignore_if_timedout=True`` the oldest pending task is dropped first).
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if not self._future_to_actor:
            raise RuntimeError("no actor is left in the pool to run the pending submits")
        key = self._wait_any(timeout)
        if key is None:
            if not ignore_if_timedout:
                raise TimeoutError("Timed out waiting for result")
            key = next(iter(self._future_to_actor))
            index, actor = self._future_to_actor.pop(key)
            future = self._index_to_future.pop(index)
            self._next_return_index = max(self._next_return_index, index + 1)
            self._return_actor(actor)
            raise TimeoutError(f"Timed out waiting for result. The task {future} has been ignored.")
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        return self._get_result(future, actor)

    def _wait_any(self, timeout: float | None) -> Any:
        """The key of a future whose refs are all ready, or None after ``timeout``."""
        import starburst

        deadline = None if timeout is None else time.monotonic() + timeout
        # Submission order, so that among futures ready together the oldest wins.
        keys = sorted(self._future_to_actor, key=lambda k: self._future_to_actor[k][0])
        owner: dict = {}
        for k in keys:
            for r in _refs_of(k):
                owner.setdefault(r, k)
        waiting = list(owner)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = starburst.wait(waiting, num_returns=len(waiting), timeout=0)
            if not ready:
                ready, _ = starburst.wait(waiting, num_returns=1, timeout=left)
            ready_set = set(ready)
            for k in keys:
                refs = _refs_of(k)
                if any(r in ready_set for r in refs):
                    rest = [r for r in refs if r not in ready_set]
                    if not rest or len(starburst.wait(rest, num_returns=len(rest), timeout=0)[0]) == len(rest):
                        return k
            if not ready or (deadline is not None and time.monotonic() >= deadline):
                return None
            # Part of a multi-ref future is ready: wait for the rest of those.
            waiting = [r for r in waiting if r not in ready_set] or waiting

    def _get_result(self, future: Any, actor: Any) -> Any:
        import starburst

        alive = True
        try:
            return starburst.get(future)
        except _actor_died_types():
            alive = False
            raise
        finally:
            self._return_actor(actor, alive=alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        # A dead actor is not made idle again: submit() would keep picking it.
        if alive:
            self._idle_actors.append(actor)
        while self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())

    # -- membership ------------------------------------------------------------------------------

    def has_free(self) -> bool:
        """Whether an actor is idle and no submit is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any:
        """Remove and return an idle actor, or ``None`` if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (idle; it immediately takes a waiting submit, if any).
        ``ValueError`` if it already belongs to the pool."""
        busy = [a for _, a in self._future_to_actor.values()]
        if any(actor is a or actor == a for a in self._idle_actors + busy):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
