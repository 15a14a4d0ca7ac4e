"""Ray 2.x semantics of get / wait / put and of ObjectRef.

Slow tasks here wait on a "gate" file that the test creates when it is done with them, and give up
by themselves after a while, so that a failing test never leaves a CPU busy for long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
import time

import numpy as np
import pytest

GET_TIMEOUT = 60


def _gated(ray):
    """A task that returns `value` once the file `gate` exists (or after `limit` seconds)."""

    @ray.remote
    def gated(gate, value="released", limit=20.0):
        import os
        import time

        deadline = time.time() + limit
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        return value

    return gated


def _open_gate(path):
    path.write_text("go")


# ------------------------------------------------------------------------------------------ put


def test_put_get_roundtrip_various_values(cluster):
    ray = cluster
    values = [0, -3.5, "text", b"bytes", None, True, [1, [2, 3]], {"a": (1, 2)}, {1, 2}, ("t",)]
    refs = [ray.put(v) for v in values]
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs, timeout=GET_TIMEOUT) == values


def test_put_objectref_raises_type_error(cluster):
    ray = cluster
    ref = ray.put(1)
    with pytest.raises(TypeError):
        ray.put(ref)


def test_put_container_holding_refs_is_allowed(cluster):
    ray = cluster
    inner = ray.put("inner")
    outer = ray.put([inner, {"k": inner}])
    got = ray.get(outer, timeout=GET_TIMEOUT)
    assert isinstance(got[0], ray.ObjectRef) and got[0] == inner
    assert got[1]["k"] == inner
    assert ray.get(got[0], timeout=GET_TIMEOUT) == "inner"


def test_put_unpicklable_raises_type_error(cluster):
    ray = cluster
    with pytest.raises(TypeError):
        ray.put(threading.Lock())


def test_two_puts_of_equal_values_are_distinct_refs(cluster):
    ray = cluster
    a = ray.put(7)
    b = ray.put(7)
    assert a != b
    assert a.hex() != b.hex()


def test_large_numpy_put_get_is_read_only_and_intact(cluster):
    ray = cluster
    arr = np.random.default_rng(0).random(300_000)  # 2.4 MB
    ref = ray.put(arr)
    got = ray.get(ref, timeout=GET_TIMEOUT)
    assert isinstance(got, np.ndarray)
    assert got.flags.writeable is False
    assert np.array_equal(got, arr)
    with pytest.raises(ValueError):
        got[0] = 1.0
    arr[0] = -1.0  # the stored copy is immutable: changing the original does not change it
    assert ray.get(ref, timeout=GET_TIMEOUT)[0] != -1.0


def test_large_numpy_put_passed_to_task_arrives_intact(cluster):
    ray = cluster
    arr = np.arange(500_000, dtype=np.int64)  # 4 MB

    @ray.remote
    def summarize(a):
        return a.shape, str(a.dtype), int(a.sum()), int(a[123_456])

    ref = ray.put(arr)
    out = ray.get(summarize.remote(ref), timeout=GET_TIMEOUT)
    assert out == ((500_000,), "int64", int(arr.sum()), 123_456)
    # and passed by value too
    out2 = ray.get(summarize.remote(arr), timeout=GET_TIMEOUT)
    assert out2 == out


def test_large_numpy_returned_by_task_is_read_only(cluster):
    ray = cluster

    @ray.remote
    def make():
        import numpy as np

        return np.ones((512, 512), dtype=np.float64)  # 2 MiB

    got = ray.get(make.remote(), timeout=GET_TIMEOUT)
    assert got.shape == (512, 512) and float(got.sum()) == 512 * 512
    assert got.flags.writeable is False


# ------------------------------------------------------------------------------------------ get


def test_get_single_and_list_preserves_input_order(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"

    @ray.remote
    def quick(v):
        return v

    slow = gated.remote(str(gate), "slow")
    refs = [slow, quick.remote("q1"), ray.put("p"), quick.remote("q2")]
    threading.Timer(0.5, _open_gate, args=(gate,)).start()
    assert ray.get(refs, timeout=GET_TIMEOUT) == ["slow", "q1", "p", "q2"]
    assert ray.get(refs[1], timeout=GET_TIMEOUT) == "q1"


def test_get_empty_list(cluster):
    ray = cluster
    started = time.monotonic()
    assert ray.get([], timeout=GET_TIMEOUT) == []
    assert time.monotonic() - started < 1.0  # nothing to wait for: the timeout must not be reached


def test_get_duplicate_refs_in_list(cluster):
    ray = cluster
    r = ray.put("dup")
    assert ray.get([r, r, r], timeout=GET_TIMEOUT) == ["dup", "dup", "dup"]


def test_get_wrong_types(cluster):
    ray = cluster
    ref = ray.put(1)
    # not an ObjectRef nor a list of them: ValueError (ray/_private/worker.py get())
    with pytest.raises(ValueError):
        ray.get(1)
    with pytest.raises(ValueError):
        ray.get("not a ref")
    # a list holding something else: TypeError (Worker.get_objects)
    with pytest.raises(TypeError):
        ray.get([1])
    with pytest.raises(TypeError):
        ray.get([ref, "x"])


def test_get_timeout_raises_get_timeout_error(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"
    ref = gated.remote(str(gate), "late")
    try:
        start = time.monotonic()
        with pytest.raises(ray.exceptions.GetTimeoutError):
            ray.get(ref, timeout=0.5)
        elapsed = time.monotonic() - start
        assert 0.4 <= elapsed < 5.0
        # GetTimeoutError is also the builtin TimeoutError (Ray PR #26771)
        with pytest.raises(TimeoutError):
            ray.get([ray.put(1), ref], timeout=0.2)
    finally:
        _open_gate(gate)
    # the object is not lost by the timeout
    assert ray.get(ref, timeout=GET_TIMEOUT) == "late"


def test_get_timeout_zero(cluster, tmp_path):
    # Since Ray 2.5 (PR #35126) timeout=0 returns at once if ready, else raises GetTimeoutError;
    # before that it blocked forever.
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"
    ready = ray.put("here")
    assert ray.get(ready, timeout=0) == "here"
    pending = gated.remote(str(gate))
    try:
        start = time.monotonic()
        with pytest.raises(ray.exceptions.GetTimeoutError):
            ray.get(pending, timeout=0)
        assert time.monotonic() - start < 2.0
        with pytest.raises(ray.exceptions.GetTimeoutError):
            ray.get([ready, pending], timeout=0)
    finally:
        _open_gate(gate)
    assert ray.get(pending, timeout=GET_TIMEOUT) == "released"


def test_get_of_finished_task_with_timeout_zero(cluster):
    ray = cluster

    @ray.remote
    def val():
        return 11

    ref = val.remote()
    ray.wait([ref], timeout=GET_TIMEOUT)
    assert ray.get(ref, timeout=0) == 11


def test_get_raises_first_error_without_waiting_for_pending(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"

    @ray.remote
    def boom():
        raise ValueError("first-error-wins")

    slow = gated.remote(str(gate), "slow", 15.0)
    bad = boom.remote()
    try:
        start = time.monotonic()
        with pytest.raises(ValueError, match="first-error-wins"):
            ray.get([slow, bad])
        assert time.monotonic() - start < 8.0, "get() waited for the pending ref before raising"
    finally:
        _open_gate(gate)
    assert ray.get(slow, timeout=GET_TIMEOUT) == "slow"


def test_get_error_is_raised_every_time(cluster):
    ray = cluster

    @ray.remote
    def bad():
        raise KeyError("again")

    ref = bad.remote()
    for _ in range(2):
        with pytest.raises(KeyError):
            ray.get(ref, timeout=GET_TIMEOUT)


# ----------------------------------------------------------------------------------------- wait


def test_wait_returns_num_returns_and_rest(cluster):
    ray = cluster
    refs = [ray.put(i) for i in range(10)]
    ready, rest = ray.wait(refs, timeout=GET_TIMEOUT)
    assert len(ready) == 1 and len(rest) == 9  # num_returns defaults to 1
    ready, rest = ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT)
    assert len(ready) == 3 and len(rest) == 7  # never more than num_returns, even if all are ready
    assert set(ready) | set(rest) == set(refs) and not set(ready) & set(rest)
    ready, rest = ray.wait(refs, num_returns=10, timeout=GET_TIMEOUT)
    assert ready == refs and rest == []


def test_wait_preserves_input_order_in_both_lists(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"
    s0 = gated.remote(str(gate), "s0")
    f1 = ray.put(1)
    s2 = gated.remote(str(gate), "s2")
    f3 = ray.put(3)
    f4 = ray.put(4)
    refs = [s0, f1, s2, f3, f4]
    try:
        ready, rest = ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT)
        assert ready == [f1, f3, f4]
        assert rest == [s0, s2]
        # fewer than num_returns ready before the timeout: returns what is ready, in order
        ready, rest = ray.wait(refs, num_returns=5, timeout=0.5)
        assert ready == [f1, f3, f4]
        assert rest == [s0, s2]
        # a subset of the ready ones keeps their relative input order
        ready, rest = ray.wait(refs, num_returns=2, timeout=GET_TIMEOUT)
        assert len(ready) == 2
        assert [r for r in refs if r in ready] == ready
        assert [r for r in refs if r in rest] == rest
    finally:
        _open_gate(gate)
    ready, rest = ray.wait(refs, num_returns=5, timeout=GET_TIMEOUT)
    assert ready == refs and rest == []


def test_wait_without_timeout_returns_as_soon_as_one_is_ready(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"

    @ray.remote
    def quick():
        return "quick"

    slow = gated.remote(str(gate), "slow", 15.0)
    fast = quick.remote()
    try:
        start = time.monotonic()
        ready, rest = ray.wait([slow, fast])
        assert time.monotonic() - start < 8.0
        assert ready == [fast] and rest == [slow]
    finally:
        _open_gate(gate)


def test_wait_timeout_and_timeout_zero(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"
    pending = gated.remote(str(gate))
    try:
        start = time.monotonic()
        ready, rest = ray.wait([pending], timeout=0)
        assert time.monotonic() - start < 2.0
        assert ready == [] and rest == [pending]
        start = time.monotonic()
        ready, rest = ray.wait([pending], timeout=0.5)
        elapsed = time.monotonic() - start
        assert ready == [] and rest == [pending]
        assert 0.4 <= elapsed < 5.0
    finally:
        _open_gate(gate)
    ready, rest = ray.wait([pending], timeout=GET_TIMEOUT)
    assert ready == [pending] and rest == []


def test_wait_counts_failed_tasks_as_ready(cluster):
    ray = cluster

    @ray.remote
    def bad():
        raise RuntimeError("failed but ready")

    ref = bad.remote()
    ready, rest = ray.wait([ref], timeout=GET_TIMEOUT)
    assert ready == [ref] and rest == []


def test_wait_fetch_local_false_accepted(cluster):
    ray = cluster
    refs = [ray.put(i) for i in range(3)]
    ready, rest = ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT, fetch_local=False)
    assert ready == refs and rest == []


def test_wait_empty_list(cluster):
    ray = cluster
    assert ray.wait([]) == ([], [])


def test_wait_argument_validation(cluster):
    ray = cluster
    a, b = ray.put(1), ray.put(2)
    with pytest.raises(TypeError):
        ray.wait(a)  # a single ref, not a list
    with pytest.raises(TypeError):
        ray.wait((a, b))  # a tuple is not a list
    with pytest.raises(TypeError):
        ray.wait(1)
    with pytest.raises(TypeError):
        ray.wait([a, 1])
    with pytest.raises(ValueError):
        ray.wait([a, a])  # duplicates
    with pytest.raises(ValueError):
        ray.wait([a, b], num_returns=3)  # more than given
    with pytest.raises(ValueError):
        ray.wait([a, b], num_returns=0)
    with pytest.raises(ValueError):
        ray.wait([a, b], num_returns=-1)
    with pytest.raises(ValueError):
        ray.wait([a, b], timeout=-1)


# ------------------------------------------------------------------------------------ ObjectRef


def test_objectref_identity_hash_hex_binary(cluster):
    ray = cluster
    a = ray.put("x")
    b = ray.put("x")
    same = pickle.loads(pickle.dumps(a))  # another ObjectRef object for the same id
    assert same is not a and same == a and a != b
    assert hash(same) == hash(a)
    assert {a: 1, b: 2}[a] == 1
    assert len({a, b, a}) == 2
    h = a.hex()
    assert isinstance(h, str) and h and all(c in "0123456789abcdef" for c in h)
    raw = a.binary()
    assert isinstance(raw, bytes) and raw
    assert raw.hex() == h
    assert h in repr(a)


def test_objectref_survives_pickling_on_the_driver(cluster):
    import cloudpickle

    ray = cluster
    a = ray.put({"v": 1})
    a2 = cloudpickle.loads(cloudpickle.dumps(a))
    assert isinstance(a2, ray.ObjectRef) and a2 == a and hash(a2) == hash(a)
    assert ray.get(a2, timeout=GET_TIMEOUT) == {"v": 1}


def test_objectref_future(cluster):
    ray = cluster

    @ray.remote
    def val(x):
        return x * 3

    @ray.remote
    def bad():
        raise ZeroDivisionError("future-error")

    fut = val.remote(5).future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=GET_TIMEOUT) == 15

    bad_fut = bad.remote().future()
    exc = bad_fut.exception(timeout=GET_TIMEOUT)
    assert isinstance(exc, ZeroDivisionError)
    assert isinstance(exc, ray.exceptions.RayTaskError)
    with pytest.raises(ZeroDivisionError):
        bad_fut.result(timeout=GET_TIMEOUT)

    # futures of put objects work too, and concurrent.futures.wait understands them
    futs = [ray.put(i).future() for i in range(3)]
    done, not_done = concurrent.futures.wait(futs, timeout=GET_TIMEOUT)
    assert len(done) == 3 and not not_done
    assert sorted(f.result() for f in futs) == [0, 1, 2]


def test_objectref_is_awaitable(cluster, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"

    @ray.remote
    def val(x):
        return x + 1

    @ray.remote
    def bad():
        raise IndexError("await-error")

    async def main():
        one = await val.remote(1)
        many = await asyncio.gather(val.remote(10), ray.put("p"), val.remote(20))
        with pytest.raises(IndexError):
            await bad.remote()
        # awaiting does not block the event loop: the ticker keeps running and opens the gate
        pending = gated.remote(str(gate), "gated", 15.0)
        ticks = 0

        async def ticker():
            nonlocal ticks
            for _ in range(5):
                await asyncio.sleep(0.05)
                ticks += 1
            _open_gate(gate)

        got, _ = await asyncio.gather(asyncio.wait_for(_await(pending), GET_TIMEOUT), ticker())
        return one, many, got, ticks

    async def _await(ref):
        return await ref

    start = time.monotonic()
    try:
        one, many, got, ticks = asyncio.run(main())
    finally:
        _open_gate(gate)
    assert time.monotonic() - start < 10.0, "awaiting an ObjectRef blocked the event loop"
    assert one == 2
    assert many == [11, "p", 21]
    assert got == "gated" and ticks == 5


def test_wrap_future_in_asyncio(cluster):
    ray = cluster

    @ray.remote
    def val():
        return "wrapped"

    async def main():
        return await asyncio.wrap_future(val.remote().future())

    assert asyncio.run(main()) == "wrapped"
