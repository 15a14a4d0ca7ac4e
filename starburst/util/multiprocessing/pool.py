"""``Pool``: the ``multiprocessing.Pool`` interface, with actors as the worker processes.

Semantics follow Ray 2.x's ``ray.util.multiprocessing.Pool`` (itself modelled on the standard
library):

- ``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None,
  ray_address=None, ray_remote_args=None)``. ``processes`` defaults to the cluster's CPU count; more
  processes than the cluster has CPUs is a ``ValueError``. If starburst is not initialized yet, the
  pool initializes it (``ray_address`` or ``$STARBURST_ADDRESS``/``$RAY_ADDRESS``, else a local
  cluster with ``processes`` CPUs). ``context`` is ignored. ``ray_remote_args`` are the actors'
  ``.options()`` (by default they ask for 0 CPUs, as in Ray, so the pool never starves tasks).
- Each worker is an actor that runs ``initializer(*initargs)`` once, then batches ("chunks") of
  calls. ``map``/``starmap``/``map_async`` split the input into chunks (``chunksize``, default
  ``ceil(len / (4 * processes))``) dealt round-robin to the workers; ``imap``/``imap_unordered``
  (``chunksize`` default 1) submit lazily, one chunk per worker at a time (the next chunk goes to
  the worker that finished first), so a long or endless iterable is fine.
- A call that raises makes ``get()`` raise that exception (the first one, in input order; its
  remote traceback is attached as a note); ``imap`` raises it at that item's position and can be
  iterated on. ``AsyncResult.get(timeout)`` and ``imap(...).next(timeout)`` raise
  ``multiprocessing.TimeoutError``.
- ``callback`` gets the whole result list (``apply_async``: the single result) once, if nothing
  failed; ``error_callback`` gets the first exception. Both run on a background thread before the
  result becomes ready.
- ``close()`` refuses new work and lets queued work finish; ``join()`` (after ``close`` or
  ``terminate``) waits for it and stops the workers; ``terminate()`` stops the workers at once, so
  unfinished results fail. ``with Pool() as p:`` terminates on exit, like the standard library.
- ``maxtasksperchild``: a worker is replaced by a fresh one after that many chunks.

As in Ray, an ``initializer`` defined in the main script can't set that script's globals for later
calls: functions pickled by value (cloudpickle) get their own copy of their globals on each transfer.
Have it change process state instead (a module attribute of an importable module, ``os.environ``, a
loaded model kept in a module-level cache of an installed package...).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import traceback
from multiprocessing import TimeoutError
from typing import Any, Callable, Iterable

_MAP, _STAR, _APPLY = 0, 1, 2


class _RemoteFailure:
    """A call's exception, carried back in a chunk's result list (an exception that can't be pickled
    is replaced by a RuntimeError with its text)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _portable_exception(exc: BaseException) -> BaseException:
    import cloudpickle

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        if hasattr(exc, "add_note"):
            exc.add_note(f"\nRemote traceback (starburst pool worker pid={os.getpid()}):\n{tb}")
        cloudpickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - whatever makes it unpicklable, send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}\n\nRemote traceback:\n{tb}")


class _PoolActor:
    """One worker process of a Pool."""

    def __init__(self, initializer: Callable | None, initargs: tuple) -> None:
        if initializer is not None:
            initializer(*initargs)

    def ping(self) -> int:
        return os.getpid()

    def run_batch(self, func: Callable, batch: list, mode: int) -> list:
        out: list = []
        for item in batch:
            try:
                if mode == _MAP:
                    out.append(func(item))
                elif mode == _STAR:
                    out.append(func(*item))
                else:
                    args, kwargs = item
                    out.append(func(*(args or ()), **(kwargs or {})))
            except Exception as exc:  # noqa: BLE001 - reported to the caller, per item
                out.append(_RemoteFailure(_portable_exception(exc)))
        return out


def _chunk_results(ref: Any, size: int) -> list:
    """The result list of one chunk; a chunk that failed as a whole (its worker died) becomes
    ``size`` failures."""
    import starburst
    from starburst.exceptions import RayError

    try:
        return starburst.get(ref)
    except RayError as exc:
        return [_RemoteFailure(exc)] * size


def _cluster_cpus() -> int:
    import starburst

    fn = getattr(starburst, "cluster_resources", None)
    if fn is not None:
        try:
            cpus = fn().get("CPU")
            if cpus:
                return int(cpus)
        except Exception:  # noqa: BLE001 - fall back below
            pass
    try:
        from starburst import _runtime

        welcome = _runtime.get_client().welcome
        if welcome is not None and welcome.total.cpus:
            return int(welcome.total.cpus)
    except Exception:  # noqa: BLE001
        pass
    return os.cpu_count() or 1


class AsyncResult:
    """The result of ``apply_async`` / ``map_async`` / ``starmap_async``. Not built directly."""

    def __init__(self, chunks: list, callback: Callable | None = None,
                 error_callback: Callable | None = None, single: bool = False) -> None:
        self._chunks = chunks  # [(ref, number of items)]
        self._callback = callback
        self._error_callback = error_callback
        self._single = single
        self._values: list = []
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="starburst-pool-result", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        import starburst

        by_ref = {ref: i for i, (ref, _) in enumerate(self._chunks)}
        results: list = [None] * len(self._chunks)
        pending = [ref for ref, _ in self._chunks]
        notified = False
        try:
            while pending:
                ready, pending = starburst.wait(pending, num_returns=1)
                for ref in ready:
                    i = by_ref[ref]
                    results[i] = _chunk_results(ref, self._chunks[i][1])
                    if not notified and self._error_callback is not None:
                        failure = next((r for r in results[i] if isinstance(r, _RemoteFailure)), None)
                        if failure is not None:
                            notified = True
                            self._safe_call(self._error_callback, failure.exc)
            values = [v for chunk in results for v in chunk]
            first_failure = next((v for v in values if isinstance(v, _RemoteFailure)), None)
            if first_failure is not None:
                self._error = first_failure.exc
            else:
                self._values = values
                if self._callback is not None:
                    self._safe_call(self._callback, values[0] if self._single else values)
        except BaseException as exc:  # noqa: BLE001 - e.g. the session ended under us
            self._error = exc
        finally:
            self._done.set()

    @staticmethod
    def _safe_call(fn: Callable, arg: Any) -> None:
        try:
            fn(arg)
        except Exception:  # noqa: BLE001 - like multiprocessing, a failing callback is only reported
            traceback.print_exc()

    def ready(self) -> bool:
        """Whether the call has finished (successfully or not)."""
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ``ValueError`` if it has not finished."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass (no error on timeout)."""
        self._done.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list, or the single value of ``apply_async``), waiting up to ``timeout``
        seconds: ``multiprocessing.TimeoutError`` if it is not ready by then; a call's exception
        is raised."""
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._values[0] if self._single else list(self._values)


class IMapIterator:
    """The iterator returned by ``imap`` / ``imap_unordered``; ``next(timeout)`` raises
    ``multiprocessing.TimeoutError`` when no result arrives in time. Not built directly."""

    def __init__(self, pool: "Pool", func: Callable, iterable: Iterable, chunksize: int,
                 mode: int, ordered: bool) -> None:
        self._pool = pool
        self._func = func
        self._items = iter(iterable)
        self._chunksize = chunksize
        self._mode = mode
        self._ordered = ordered
        self._exhausted = False
        self._next_chunk = 0  # index of the next chunk to submit
        self._next_yield = 0  # ordered: index of the next chunk to yield
        self._inflight: dict = {}  # ref -> (chunk index, size, worker slot)
        self._finished: dict = {}  # ordered: chunk index -> results
        self._buffer: collections.deque = collections.deque()
        # One chunk per worker at a time; the next goes to whichever worker finishes first, so a
        # slow item never holds up the items queued behind it.
        for slot in range(len(pool._workers)):
            if not self._submit_next(slot):
                return

    def _submit_next(self, slot: int) -> bool:
        if self._exhausted:
            return False
        chunk = list(itertools.islice(self._items, self._chunksize))
        if not chunk:
            self._exhausted = True
            return False
        ref = self._pool._run_batch(slot, self._func, chunk, self._mode)
        self._inflight[ref] = (self._next_chunk, len(chunk), slot)
        self._next_chunk += 1
        return True

    def __iter__(self) -> "IMapIterator":
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        import starburst

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            if self._ordered and self._next_yield in self._finished:
                self._buffer.extend(self._finished.pop(self._next_yield))
                self._next_yield += 1
                continue
            if not self._inflight:
                raise StopIteration
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = starburst.wait(list(self._inflight), num_returns=1, timeout=left)
            if not ready:
                raise TimeoutError
            for ref in ready:
                index, size, slot = self._inflight.pop(ref)
                results = _chunk_results(ref, size)
                self._submit_next(slot)
                if self._ordered:
                    self._finished[index] = results
                else:
                    self._buffer.extend(results)
        value = self._buffer.popleft()
        if isinstance(value, _RemoteFailure):
            raise value.exc
        return value


class Pool:
    """A pool of worker actors with the ``multiprocessing.Pool`` interface.

    Args:
        processes: number of workers; default: the cluster's CPU count.
        initializer: run as ``initializer(*initargs)`` once in each worker when it starts.
        initargs: arguments for ``initializer``.
        maxtasksperchild: replace a worker after it has run this many chunks (default: never).
        context: accepted for compatibility with ``multiprocessing.Pool``; ignored.
        ray_address: the cluster to connect to if starburst is not initialized yet.
        ray_remote_args: ``.options()`` for the worker actors (default ``{"num_cpus": 0}``).
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict | None = None,
    ) -> None:
        import starburst

        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)):
            raise TypeError(f"processes must be an int or None, got {type(processes).__name__}")
        if processes is not None and processes <= 0:
            raise ValueError("Processes in the pool must be >0.")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._closed = False
        self._terminated = False
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasksperchild = maxtasksperchild
        self._remote_args = {"num_cpus": 0, **(ray_remote_args or {})}
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._outstanding: list = []  # every chunk ref not yet known to be finished
        self._retiring: list = []  # (old worker, its last ref): stopped once that ref is done

        if not starburst.is_initialized():
            if ray_address is not None:
                starburst.init(address=ray_address)
            elif os.environ.get("STARBURST_ADDRESS") or os.environ.get("RAY_ADDRESS"):
                starburst.init()
            else:
                starburst.init(num_cpus=processes)
        cpus = _cluster_cpus()
        if processes is None:
            processes = cpus
        elif processes > cpus:
            raise ValueError(f"Tried to start a pool with {processes} processes on an existing cluster, "
                             f"but there are only {cpus} CPUs in the cluster.")
        self._processes = processes
        self._actor_class = starburst.remote(_PoolActor).options(**self._remote_args)
        # each entry: [actor handle, chunks run]
        self._workers: list = [[self._new_actor(), 0] for _ in range(processes)]
        # Wait for the workers to be up, so an initializer's error shows here.
        starburst.get([w[0].ping.remote() for w in self._workers])

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._initializer, self._initargs)

    # -- plumbing --------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _run_batch(self, slot: int, func: Callable, batch: list, mode: int) -> Any:
        with self._lock:
            worker = self._workers[slot]
            ref = worker[0].run_batch.remote(func, batch, mode)
            worker[1] += 1
            self._outstanding.append(ref)
            if self._maxtasksperchild is not None and worker[1] >= self._maxtasksperchild:
                self._retiring.append((worker[0], ref))
                self._workers[slot] = [self._new_actor(), 0]
            self._reap(block=False)
        return ref

    def _reap(self, block: bool) -> None:
        """Forget finished refs; stop retired workers whose last chunk is done."""
        import starburst

        if self._outstanding:
            ready, _ = starburst.wait(self._outstanding, num_returns=len(self._outstanding), timeout=0)
            done = set(ready)
            self._outstanding = [r for r in self._outstanding if r not in done]
        still = []
        for actor, last in self._retiring:
            if block:
                starburst.wait([last], timeout=None)
            if block or starburst.wait([last], timeout=0)[0]:
                _kill(actor)
            else:
                still.append((actor, last))
        self._retiring = still

    def _chunks(self, iterable: Iterable, chunksize: int | None) -> list:
        items = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), len(self._workers) * 4)
            if extra:
                chunksize += 1
        if chunksize <= 0:
            chunksize = 1
        return [items[i:i + chunksize] for i in range(0, len(items), chunksize)]

    def _map_async(self, func: Callable, iterable: Iterable, chunksize: int | None, mode: int,
                   callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        self._check_running()
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize <= 0):
            raise ValueError("chunksize must be a positive int or None")
        chunks = []
        for chunk in self._chunks(iterable, chunksize):
            slot = next(self._rr) % len(self._workers)
            chunks.append((self._run_batch(slot, func, chunk, mode), len(chunk)))
        return AsyncResult(chunks, callback, error_callback)

    # -- the multiprocessing.Pool interface ------------------------------------------------------

    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None) -> Any:
        """``func(*args, **kwds)`` on a worker; waits for and returns the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: tuple = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """``func(*args, **kwds)`` on a worker; returns an :class:`AsyncResult` at once."""
        self._check_running()
        slot = next(self._rr) % len(self._workers)
        ref = self._run_batch(slot, func, [(tuple(args or ()), dict(kwds or {}))], _APPLY)
        return AsyncResult([(ref, 1)], callback, error_callback, single=True)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed on the workers, in order."""
        return self._map_async(func, iterable, chunksize, _MAP).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """:meth:`map` returning an :class:`AsyncResult` at once."""
        return self._map_async(func, iterable, chunksize, _MAP, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed on the workers, in order."""
        return self._map_async(func, iterable, chunksize, _STAR).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """:meth:`starmap` returning an :class:`AsyncResult` at once."""
        return self._map_async(func, iterable, chunksize, _STAR, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """A lazy :meth:`map`: an iterator over the results in input order, submitting the input one
        chunk per worker at a time."""
        self._check_running()
        if not isinstance(chunksize, int) or chunksize <= 0:
            raise ValueError("chunksize must be a positive int")
        return IMapIterator(self, func, iterable, chunksize, _MAP, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """Like :meth:`imap`, but yields results in the order they finish."""
        self._check_running()
        if not isinstance(chunksize, int) or chunksize <= 0:
            raise ValueError("chunksize must be a positive int")
        return IMapIterator(self, func, iterable, chunksize, _MAP, ordered=False)

    def close(self) -> None:
        """Accept no more work; work already submitted still runs. Then :meth:`join`."""
        self._closed = True

    def terminate(self) -> None:
        """Stop the workers now; results not yet computed fail."""
        self._closed = True
        if self._terminated:
            return
        self._terminated = True
        with self._lock:
            for actor, _ in self._retiring:
                _kill(actor)
            self._retiring = []
            for worker in self._workers:
                _kill(worker[0])

    def join(self) -> None:
        """Wait for the submitted work to finish and stop the workers (after :meth:`close` or
        :meth:`terminate`; ``ValueError`` while the pool is running)."""
        import starburst

        if not self._closed:
            raise ValueError("Pool is still running")
        if self._terminated:
            return
        with self._lock:
            if self._outstanding:
                starburst.wait(self._outstanding, num_returns=len(self._outstanding))
                self._outstanding = []
            self._reap(block=True)
        self.terminate()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        state = "terminated" if self._terminated else "closed" if self._closed else "running"
        return f"<starburst.util.multiprocessing.Pool state={state} pool_size={len(self._workers)}>"


def _kill(actor: Any) -> None:
    import starburst

    try:
        starburst.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead or the session is gone: nothing to stop
        pass
