"""starburst.util: as_completed / map_unordered, ActorPool, Queue and the multiprocessing Pool, on the
module's embedded 2-CPU cluster. Ray 2.x semantics (see each module's docstring)."""

from __future__ import annotations

import asyncio
import os
import queue as stdlib_queue
import sys
import time
import multiprocessing

import cloudpickle
import pytest

import starburst
from starburst import exceptions
from starburst.util import ActorPool, as_completed, map_unordered
from starburst.util.multiprocessing import Pool
from starburst.util.queue import Empty, Full, Queue

# The Pool tests send plain module-level functions to workers, which can't import this test module:
# pickle its functions by value, as they would be from a script's __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@starburst.remote
def sleepy(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


@starburst.remote
def fails(x):
    raise ValueError(f"bad {x}")


@starburst.remote
def square(x):
    return x * x


@starburst.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def slow_double(self, seconds, v):
        time.sleep(seconds)
        return 2 * v

    def pid(self):
        return os.getpid()


# -- as_completed / map_unordered (tasks only) ---------------------------------------------------


def test_as_completed_yields_in_completion_order(cluster):
    refs = [sleepy.remote(s) for s in (1.0, 0.0, 0.4)]
    assert list(as_completed(refs, chunk_size=1)) == [0.0, 0.4, 1.0]


def test_as_completed_batches_and_refs(cluster):
    refs = [square.remote(i) for i in range(7)]
    out = list(as_completed(refs, chunk_size=3, yield_obj_refs=True))
    assert sorted(out) == sorted(refs) and len(out) == 7
    assert all(isinstance(r, starburst.ObjectRef) for r in out)
    assert sorted(as_completed(refs)) == [i * i for i in range(7)]
    assert list(as_completed([])) == []


def test_as_completed_errors_and_arguments(cluster):
    with pytest.raises(ValueError, match="bad 1"):
        list(as_completed([fails.remote(1)], chunk_size=1))
    with pytest.raises(ValueError, match="chunk_size"):
        list(as_completed([square.remote(1)], chunk_size=0))
    with pytest.raises(ValueError, match="chunk_size"):
        list(as_completed([square.remote(1)], num_returns=1))


def test_as_completed_timeout_raises_instead_of_spinning(cluster):
    slow = sleepy.remote(3)
    started = time.monotonic()
    with pytest.raises(exceptions.GetTimeoutError):
        list(as_completed([slow], timeout=0.3))
    assert time.monotonic() - started < 2.5
    starburst.cancel(slow, force=True)


def test_map_unordered_results_and_backpressure(cluster):
    consumed = []

    def items():
        for i in range(12):
            consumed.append(i)
            yield i

    gen = map_unordered(square, items(), backpressure_size=3, chunk_size=1)
    first = next(gen)
    # Only backpressure_size items were submitted before the first result came back.
    assert len(consumed) == 3 and first in (0, 1, 4)
    assert sorted([first, *gen]) == [i * i for i in range(12)]
    assert sorted(map_unordered(square, range(5), backpressure_size=None)) == [0, 1, 4, 9, 16]
    assert sorted(starburst.get(list(map_unordered(square, range(3), yield_obj_refs=True)))) == [0, 1, 4]


def test_map_unordered_arguments(cluster):
    with pytest.raises(ValueError, match="backpressure_size"):
        list(map_unordered(square, [1], backpressure_size=0))
    with pytest.raises(TypeError):
        list(map_unordered(lambda x: x, [1]))
    with pytest.raises(ValueError, match="bad 2"):
        list(map_unordered(fails, [2]))


# -- ActorPool ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doublers(cluster):
    actors = [Doubler.remote(), Doubler.remote()]
    starburst.get([a.double.remote(0) for a in actors])
    return actors


def test_actor_pool_map_and_map_unordered(doublers):
    pool = ActorPool(doublers)
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4, 5])) == [2, 4, 6, 8, 10]
    out = list(pool.map_unordered(lambda a, v: a.slow_double.remote(0.3 if v == 1 else 0, v), [1, 2, 3, 4]))
    assert sorted(out) == [2, 4, 6, 8]
    assert out[-1] == 2  # the slow one comes last
    assert not pool.has_next() and pool.has_free()


def test_actor_pool_submit_get_next_and_membership(doublers):
    a1, a2 = doublers
    pool = ActorPool([a1])
    assert pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.has_next() and not pool.has_free()
    assert pool.pop_idle() is None
    pool.submit(lambda a, v: a.double.remote(v), 2)  # waits for the busy actor
    pool.push(a2)  # the new actor takes the waiting value at once
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a2)
    assert [pool.get_next(), pool.get_next()] == [2, 4]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    assert pool.pop_idle() in (a1, a2)
    assert pool.pop_idle() in (a1, a2)
    assert pool.pop_idle() is None and not pool.has_free()


def test_actor_pool_more_values_than_actors(doublers):
    pool = ActorPool(doublers)
    for v in range(9):
        pool.submit(lambda a, v: a.double.remote(v), v)
    assert [pool.get_next() for _ in range(9)] == [2 * v for v in range(9)]


def test_actor_pool_timeouts(doublers):
    pool = ActorPool(doublers[:1])
    pool.submit(lambda a, v: a.slow_double.remote(1.0, v), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.1)
    assert pool.has_next()  # the task is kept: ask again
    assert pool.get_next(timeout=10) == 10
    pool.submit(lambda a, v: a.slow_double.remote(1.0, v), 6)
    with pytest.raises(TimeoutError, match="ignored"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()
    # The ignored call still runs: a later call to that actor returns after it (calls run in order).
    assert starburst.get(doublers[0].double.remote(1), timeout=30) == 2


def test_actor_pool_ordered_after_unordered_is_refused(doublers):
    pool = ActorPool(doublers)
    pool.submit(lambda a, v: a.slow_double.remote(0.5, v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered() == 4
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    assert pool.get_next_unordered() == 2


def test_actor_pool_task_error_keeps_actor(doublers):
    pool = ActorPool(doublers[:1])
    pool.submit(lambda a, v: a.double.remote(v), None)  # 2 * None: TypeError in the actor
    with pytest.raises(TypeError):
        pool.get_next()
    assert pool.has_free()
    assert list(pool.map(lambda a, v: a.double.remote(v), [3])) == [6]


def test_actor_pool_drops_dead_actor(cluster):
    victim, survivor = Doubler.remote(), Doubler.remote()
    starburst.get([victim.pid.remote(), survivor.pid.remote()])
    starburst.kill(victim)
    pool = ActorPool([victim])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    with pytest.raises(exceptions.RayActorError):
        pool.get_next()
    assert not pool.has_free()  # the dead actor left the pool
    pool.push(survivor)
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2])) == [2, 4]
    starburst.kill(survivor)


# -- Queue ----------------------------------------------------------------------------------------


@starburst.remote
def drain(q, timeout):
    got = []
    while True:
        try:
            got.append(q.get(timeout=timeout))
        except Empty:
            return got


@starburst.remote
def produce(q, items, delay):
    time.sleep(delay)
    for item in items:
        q.put(item)
    return len(items)


def test_queue_fifo_sizes_and_nowait(cluster):
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    q.put("a")
    q.put_nowait({"b": 1})
    assert q.full() and q.size() == 2
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(stdlib_queue.Full):  # a subclass of the standard library's
        q.put("c", block=False)
    with pytest.raises(Full):
        q.put("c", timeout=0.2)
    assert q.get() == "a" and q.get_nowait() == {"b": 1}
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    q.shutdown()
    with pytest.raises(RuntimeError):
        q.get_nowait()


def test_queue_get_timeout_waits(cluster):
    q = Queue()
    started = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 5
    q.shutdown()


def test_queue_batches(cluster):
    q = Queue(maxsize=5)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full):
        q.put_nowait_batch([4, 5, 6])  # all or nothing
    assert q.qsize() == 3
    with pytest.raises(Empty):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    assert q.get() == 3
    q.shutdown()


def test_queue_shared_with_tasks(cluster):
    q = Queue()
    for i in range(5):
        q.put(i)
    assert starburst.get(drain.remote(q, 0.5)) == [0, 1, 2, 3, 4]
    # A blocking get in the driver is released by a put from a task.
    producer = produce.remote(q, ["x", "y"], 0.3)
    assert q.get(timeout=20) == "x"
    assert q.get(timeout=20) == "y"
    assert starburst.get(producer) == 2
    # Several getters blocked at once in the queue's async actor don't hold up a put.
    consumers = [drain.remote(q, 2) for _ in range(3)]
    time.sleep(0.5)
    q.put_nowait_batch(list(range(6)))
    got = starburst.get(consumers, timeout=60)
    assert sorted(x for part in got for x in part) == list(range(6))
    q.shutdown()


def test_queue_async(cluster):
    q = Queue()

    async def main():
        await q.put_async(1)
        await q.put_async(2, block=False)
        first = await q.get_async()
        second = await q.get_async(block=False)
        try:
            await q.get_async(timeout=0.2)
        except Empty:
            return first, second, "empty"
        return first, second, "no error"

    assert asyncio.run(main()) == (1, 2, "empty")
    q.shutdown()


# -- multiprocessing.Pool --------------------------------------------------------------------------


def _square(x):
    return x * x


def _add(a, b):
    return a + b


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def _pid(_=None):
    return os.getpid()


def _slow(seconds):
    time.sleep(seconds)
    return seconds


def _set_init(value):
    # Not a global of this module: functions pickled by value don't share globals across pickles
    # (the same cloudpickle limitation Ray documents for its Pool's initializer).
    os.environ["STARBURST_TEST_POOL_INIT"] = value


def _get_init(_=None):
    return os.environ.get("STARBURST_TEST_POOL_INIT")


@pytest.fixture(scope="module")
def pool(cluster):
    p = Pool(processes=2)
    yield p
    p.terminate()


def test_pool_map_starmap_apply(pool):
    assert pool.map(_square, range(10)) == [x * x for x in range(10)]
    assert pool.map(_square, range(7), chunksize=3) == [x * x for x in range(7)]
    assert pool.map(_square, []) == []
    assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(_add, (1,), {"b": 5}) == 6
    assert pool.apply_async(_square, (9,)).get(timeout=30) == 81
    # Both workers take part.
    assert len(set(pool.map(_pid, range(8), chunksize=1))) == 2


def test_pool_imap(pool):
    assert list(pool.imap(_square, iter(range(9)))) == [x * x for x in range(9)]
    assert list(pool.imap(_square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(_square, range(9))) == sorted(x * x for x in range(9))
    out = list(pool.imap_unordered(_slow, [0.6, 0.0, 0.0]))
    assert out[-1] == 0.6
    it = pool.imap(_slow, [1.0])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    assert it.next(timeout=30) == 1.0


def test_pool_errors(pool):
    with pytest.raises(ValueError, match="three"):
        pool.map(_fail_on_three, range(6))
    it = pool.imap(_fail_on_three, range(5))
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    with pytest.raises(ValueError, match="three"):
        next(it)
    assert next(it) == 4  # iteration goes on past a failed item, like multiprocessing
    res = pool.apply_async(_fail_on_three, (3,))
    res.wait(30)
    assert res.ready() and not res.successful()
    with pytest.raises(ValueError):
        res.get()


def test_pool_async_results_and_callbacks(pool):
    got, errors = [], []
    res = pool.map_async(_square, range(5), callback=got.append, error_callback=errors.append)
    assert res.get(timeout=30) == [0, 1, 4, 9, 16]
    assert res.ready() and res.successful()
    assert got == [[0, 1, 4, 9, 16]] and errors == []
    bad = pool.map_async(_fail_on_three, range(5), callback=got.append, error_callback=errors.append)
    bad.wait(30)
    assert len(got) == 1 and len(errors) == 1 and isinstance(errors[0], ValueError)
    single = []
    pool.apply_async(_add, (2, 3), callback=single.append).get(30)
    assert single == [5]
    slow = pool.apply_async(_slow, (1.0,))
    with pytest.raises(ValueError):
        slow.successful()  # not ready yet
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.1)
    assert slow.get(timeout=30) == 1.0


def test_pool_initializer_close_join(cluster):
    p = Pool(processes=2, initializer=_set_init, initargs=("ready",))
    assert p.map(_get_init, range(4), chunksize=1) == ["ready"] * 4
    pending = p.map_async(_slow, [0.3, 0.3])
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="not running"):
        p.map(_square, [1])
    p.join()  # waits for the queued work, then stops the workers
    assert pending.get(timeout=1) == [0.3, 0.3]


def test_pool_context_manager_terminates_and_maxtasksperchild(cluster):
    with Pool(processes=1, maxtasksperchild=1) as p:
        pids = p.map(_pid, range(3), chunksize=1)
        assert len(set(pids)) == 3  # a fresh worker for every chunk
        slow = p.apply_async(_slow, (30,))
    # terminate() on exit: the unfinished call fails instead of hanging
    with pytest.raises(Exception):  # noqa: B017 - multiprocessing leaves the error type unspecified
        slow.get(timeout=20)
    with pytest.raises(ValueError):
        p.apply(_square, (2,))


def test_pool_rejects_more_processes_than_cpus(cluster):
    with pytest.raises(ValueError, match="CPUs"):
        Pool(processes=64)


def test_node_ip_address_is_an_address_on_a_fargate_node(monkeypatch):
    """A Fargate node listens on 0.0.0.0 (its STARBURST_HOST): that is no address to give out."""
    import socket

    from starburst.util import get_node_ip_address

    monkeypatch.setenv("STARBURST_HOST", "0.0.0.0")
    monkeypatch.setenv("STARBURST_TLS_BUNDLE", "s3://bucket/cluster/tls/node-bundle.json")
    assert get_node_ip_address() == socket.gethostbyname(socket.gethostname()) != "0.0.0.0"
    monkeypatch.delenv("STARBURST_TLS_BUNDLE")
    monkeypatch.delenv("STARBURST_HOST")
    assert get_node_ip_address() == "127.0.0.1"  # this machine's cluster
