"""Consume task results in the order they finish: :func:`as_completed` and :func:`map_unordered`.

These follow ``ray.util.as_completed`` / ``ray.util.map_unordered`` (Ray 2.4x, alpha API): the same
names, positional and keyword arguments and defaults. One deliberate difference: when a
``timeout`` is given and a whole wait round passes with nothing ready, starburst raises
:class:`starburst.exceptions.GetTimeoutError` (a ``TimeoutError``) instead of waiting again forever.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

#: How many refs each internal ``wait`` round asks for (``num_returns``), as in Ray.
DEFAULT_CHUNK_SIZE = 10
#: How many tasks ``map_unordered`` keeps in flight before it starts yielding, as in Ray.
DEFAULT_BACKPRESSURE_SIZE = 100

_WAIT_KWARGS = frozenset({"timeout", "fetch_local"})


def _check_kwargs(chunk_size: Any, kwargs: dict) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")
    unknown = sorted(set(kwargs) - _WAIT_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; extra keywords are passed to wait() "
                        f"(timeout, fetch_local)")


def _next_batch(refs: list, chunk_size: int, yield_obj_refs: bool, wait_kwargs: dict) -> tuple[list, list]:
    """One ``wait`` round: (ready values or refs, refs still pending). Raises GetTimeoutError when a
    timeout was given and nothing became ready in it."""
    import starburst
    from starburst.exceptions import GetTimeoutError

    ready, pending = starburst.wait(refs, num_returns=min(chunk_size, len(refs)), **wait_kwargs)
    if not ready:
        raise GetTimeoutError(
            f"none of {len(refs)} pending results was ready within timeout={wait_kwargs.get('timeout')}s")
    if yield_obj_refs:
        return ready, pending
    return starburst.get(ready), pending


def as_completed(
    refs: Sequence[Any],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Yield the results of ``refs`` (or, with ``yield_obj_refs=True``, the refs themselves) as they
    become ready, instead of waiting for all of them like ``get(refs)``.

    Each round waits until ``chunk_size`` of the remaining refs are ready (``num_returns`` of
    :func:`starburst.wait`), then yields that batch in submission order; so the overall order is
    "roughly by completion". ``chunk_size=1`` yields strictly as each result arrives.

    Extra keyword arguments go to :func:`starburst.wait`: ``timeout`` bounds each round (a round that
    ends with fewer than ``chunk_size`` ready yields what is ready; one with none raises
    :class:`~starburst.exceptions.GetTimeoutError`), ``fetch_local`` is accepted for Ray
    compatibility. A failed task raises its error when its result is reached (not with
    ``yield_obj_refs=True``: then ``get`` the ref to see it).

    Example::

        refs = [simulate.remote(seed) for seed in range(100)]
        for value in starburst.util.as_completed(refs, chunk_size=1):
            print(value)
    """
    _check_kwargs(chunk_size, kwargs)
    pending = list(refs)
    while pending:
        batch, pending = _next_batch(pending, chunk_size, yield_obj_refs, kwargs)
        yield from batch


def map_unordered(
    fn: Any,
    items: Iterable[Any],
    *,
    backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    yield_obj_refs: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Call the remote function ``fn`` once per item (``fn.remote(item)``) and yield the results as
    they finish, in no particular order.

    At most ``backpressure_size`` tasks are in flight (``None``: no limit): once that many are
    submitted, the next ``chunk_size`` results to finish are yielded before more items are taken from
    ``items``, so an endless or huge iterable never floods the cluster. ``items`` is consumed lazily.
    ``fn`` may also be any object with a ``.remote(item)`` method returning an ObjectRef, such as
    ``f.options(num_cpus=2)`` or an actor method. ``yield_obj_refs`` and extra keyword arguments
    (``timeout``, ``fetch_local``) behave as in :func:`as_completed`.

    Example::

        @starburst.remote
        def square(x):
            return x * x

        total = sum(starburst.util.map_unordered(square, range(1000), backpressure_size=50))
    """
    if backpressure_size is None:
        limit: float = float("inf")
    elif isinstance(backpressure_size, bool) or not isinstance(backpressure_size, int):
        raise TypeError(f"backpressure_size must be an int or None, got {type(backpressure_size).__name__}")
    elif backpressure_size <= 0:
        raise ValueError("backpressure_size must be positive.")
    else:
        limit = backpressure_size
    _check_kwargs(chunk_size, kwargs)
    if not hasattr(fn, "remote"):
        raise TypeError(f"map_unordered() needs a remote function (something with .remote()), got {fn!r}")
    pending: list = []
    for item in items:
        pending.append(fn.remote(item))
        if len(pending) >= limit:
            batch, pending = _next_batch(pending, chunk_size, yield_obj_refs, kwargs)
            yield from batch
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **kwargs)
