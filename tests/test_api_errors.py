"""Ray 2.x error semantics: exception classes, RayTaskError, retries, worker crashes, cancel,
unserializable arguments.

Attempts are counted with files in tmp_path (one line per attempt), because retries run in other
processes. Remote functions are local to the tests so that cloudpickle ships them by value.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time

import pytest

GET_TIMEOUT = 60


def _attempts(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_file(path: pathlib.Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def _looper(ray, **options):
    """A task that marks `started`, then sleeps in small steps for up to `limit` seconds."""

    def loop(started, limit=20.0, counter=None):
        import time

        if counter:
            with open(counter, "a") as f:
                f.write("attempt\n")
        with open(started, "w") as f:
            f.write("started")
        deadline = time.time() + limit
        while time.time() < deadline:
            time.sleep(0.05)
        return "finished"

    return ray.remote(**options)(loop) if options else ray.remote(loop)


# --------------------------------------------------------------------------------- hierarchy


def test_exception_hierarchy():
    import starburst
    import starburst.exceptions as exc

    assert starburst.exceptions is exc
    assert issubclass(exc.RayError, Exception)
    assert exc.StarburstError is exc.RayError
    assert exc.TaskError is exc.RayTaskError
    for name in ("RayTaskError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError", "ObjectLostError"):
        assert issubclass(getattr(exc, name), exc.RayError), name
    assert issubclass(exc.GetTimeoutError, TimeoutError)
    assert not issubclass(exc.WorkerCrashedError, exc.RayTaskError)
    assert not issubclass(exc.TaskCancelledError, exc.RayTaskError)


# --------------------------------------------------------------------------------- task errors


def test_task_error_is_instance_of_user_exception(cluster):
    ray = cluster

    @ray.remote
    def fails():
        raise ValueError("bad value 123")

    with pytest.raises(ValueError) as info:
        ray.get(fails.remote(), timeout=GET_TIMEOUT)
    err = info.value
    assert isinstance(err, ray.exceptions.RayTaskError)
    assert isinstance(err, ray.exceptions.RayError)
    assert "bad value 123" in str(err)


def test_task_error_str_contains_remote_traceback(cluster):
    ray = cluster

    @ray.remote
    def outer_task_fn():
        def inner_helper_fn():
            raise ZeroDivisionError("deep in the helper")

        inner_helper_fn()

    with pytest.raises(ZeroDivisionError) as info:
        ray.get(outer_task_fn.remote(), timeout=GET_TIMEOUT)
    text = str(info.value)
    assert "ZeroDivisionError" in text
    assert "deep in the helper" in text
    assert "outer_task_fn" in text
    assert "inner_helper_fn" in text  # a frame of the remote stack, not just the message


def test_task_error_traceback_names_the_source_file(cluster):
    # Ray's traceback lines read 'File "/path/to/module.py", line N, in fn' plus the source line.
    # (Stock cloudpickle >= 3 renames co_filename to "<dynamic-code>" for functions pickled by
    # value; Ray's vendored cloudpickle keeps the real path.)
    ray = cluster

    @ray.remote
    def failing_fn():
        raise ArithmeticError("where am I")

    with pytest.raises(ArithmeticError) as info:
        ray.get(failing_fn.remote(), timeout=GET_TIMEOUT)
    text = str(info.value)
    assert os.path.basename(__file__) in text
    assert 'raise ArithmeticError("where am I")' in text  # the source line, read from the file


def test_custom_exception_class_and_attributes(cluster):
    ray = cluster

    class QuotaError(Exception):
        pass

    @ray.remote
    def fails():
        e = QuotaError("over quota")
        e.code = 42
        raise e

    with pytest.raises(QuotaError) as info:
        ray.get(fails.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert info.value.code == 42
    assert "over quota" in str(info.value)


def test_builtin_exception_subclass_relationships_kept(cluster):
    ray = cluster

    @ray.remote
    def fails():
        raise KeyError("missing")

    with pytest.raises(LookupError):  # KeyError's base class catches it too
        ray.get(fails.remote(), timeout=GET_TIMEOUT)


def test_error_propagates_to_dependent_task_without_running_it(cluster, tmp_path):
    ray = cluster
    ran = tmp_path / "ran"

    @ray.remote
    def fails():
        raise ValueError("upstream failed")

    @ray.remote
    def consumer(x, marker):
        open(marker, "w").close()
        return x

    with pytest.raises(ValueError) as info:
        ray.get(consumer.remote(fails.remote(), str(ran)), timeout=GET_TIMEOUT)
    assert "upstream failed" in str(info.value)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert not ran.exists()


def test_error_propagates_through_nested_get(cluster):
    ray = cluster

    @ray.remote
    def child():
        raise ValueError("child broke")

    @ray.remote
    def parent():
        return ray.get(child.remote())

    # Ray avoids nesting RayTaskErrors: the driver sees the child's original exception type.
    with pytest.raises(ValueError) as info:
        ray.get(parent.remote(), timeout=GET_TIMEOUT)
    assert "child broke" in str(info.value)


def test_error_fills_every_return_ref(cluster):
    ray = cluster

    @ray.remote(num_returns=2)
    def fails():
        raise RuntimeError("no pair")

    a, b = fails.remote()
    for ref in (a, b):
        with pytest.raises(RuntimeError):
            ray.get(ref, timeout=GET_TIMEOUT)


def test_unpicklable_return_value_fails_the_task(cluster):
    ray = cluster

    @ray.remote
    def returns_lock():
        import threading

        return threading.Lock()

    with pytest.raises(ray.exceptions.RayError):
        ray.get(returns_lock.remote(), timeout=GET_TIMEOUT)


# --------------------------------------------------------------------------------- unpicklable args


def test_unpicklable_positional_argument_raises_type_error_at_call(cluster):
    ray = cluster

    @ray.remote
    def f(x):
        return 1

    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        f.remote(lock)
    assert "lock" in str(info.value).lower()


def test_unpicklable_keyword_argument_raises_type_error_at_call(cluster):
    ray = cluster

    @ray.remote
    def f(x=None):
        return 1

    with pytest.raises(TypeError) as info:
        f.remote(x=threading.Lock())
    assert "lock" in str(info.value).lower()
    # the function itself is still usable afterwards
    assert ray.get(f.remote(x=1), timeout=GET_TIMEOUT) == 1


# --------------------------------------------------------------------------------- retries


def test_application_error_not_retried_by_default(cluster, tmp_path):
    ray = cluster
    counter = tmp_path / "count"

    @ray.remote  # max_retries defaults to 3, but only for system failures
    def fails(path):
        with open(path, "a") as f:
            f.write("x\n")
        raise ValueError("app error")

    with pytest.raises(ValueError):
        ray.get(fails.remote(str(counter)), timeout=GET_TIMEOUT)
    # (the error comes once the head has given up: every attempt was made before it)
    assert _attempts(counter) == 1


def test_retry_exceptions_true_retries_until_success(cluster, tmp_path):
    ray = cluster
    counter = tmp_path / "count"

    @ray.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        with open(path, "a") as f:
            f.write("x\n")
        with open(path) as f:
            n = len(f.read().splitlines())
        if n < 3:
            raise ValueError(f"attempt {n} fails")
        return n

    assert ray.get(flaky.remote(str(counter)), timeout=GET_TIMEOUT) == 3
    assert _attempts(counter) == 3


def test_retry_exceptions_gives_up_after_max_retries(cluster, tmp_path):
    ray = cluster
    counter = tmp_path / "count"

    @ray.remote
    def always(path):
        with open(path, "a") as f:
            f.write("x\n")
        raise ValueError("always fails")

    with pytest.raises(ValueError):
        ray.get(always.options(max_retries=2, retry_exceptions=True).remote(str(counter)), timeout=GET_TIMEOUT)
    # (the error comes once the head has given up: every attempt was made before it)
    assert _attempts(counter) == 3  # 1 try + 2 retries


def test_retry_exceptions_list_retries_only_listed_types(cluster, tmp_path):
    ray = cluster

    def make(exc_type):
        @ray.remote(max_retries=2, retry_exceptions=[ValueError, LookupError])
        def flaky(path):
            with open(path, "a") as f:
                f.write("x\n")
            with open(path) as f:
                n = len(f.read().splitlines())
            if n < 2:
                raise exc_type("first attempt fails")
            return n

        return flaky

    listed = tmp_path / "listed"
    assert ray.get(make(ValueError).remote(str(listed)), timeout=GET_TIMEOUT) == 2
    assert _attempts(listed) == 2

    subclass = tmp_path / "subclass"  # KeyError is a LookupError: retried
    assert ray.get(make(KeyError).remote(str(subclass)), timeout=GET_TIMEOUT) == 2
    assert _attempts(subclass) == 2

    unlisted = tmp_path / "unlisted"
    with pytest.raises(TypeError):
        ray.get(make(TypeError).remote(str(unlisted)), timeout=GET_TIMEOUT)
    # (the error comes once the head has given up: every attempt was made before it)
    assert _attempts(unlisted) == 1


def test_retry_exceptions_zero_max_retries_means_no_retry(cluster, tmp_path):
    ray = cluster
    counter = tmp_path / "count"

    @ray.remote(max_retries=0, retry_exceptions=True)
    def fails(path):
        with open(path, "a") as f:
            f.write("x\n")
        raise ValueError("no retry")

    with pytest.raises(ValueError):
        ray.get(fails.remote(str(counter)), timeout=GET_TIMEOUT)
    # (the error comes once the head has given up: every attempt was made before it)
    assert _attempts(counter) == 1


# --------------------------------------------------------------------------------- worker crashes


def test_worker_crash_without_retries_raises_worker_crashed_error(cluster):
    ray = cluster

    @ray.remote(max_retries=0)
    def die():
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ray.exceptions.WorkerCrashedError) as info:
        ray.get(die.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayError)

    # the cluster replaces the dead worker
    @ray.remote
    def alive():
        return "alive"

    assert ray.get([alive.remote() for _ in range(4)], timeout=GET_TIMEOUT) == ["alive"] * 4


def test_worker_crash_is_retried_by_default(cluster, tmp_path):
    ray = cluster
    marker = tmp_path / "crashed-once"
    counter = tmp_path / "count"

    @ray.remote  # default max_retries=3 covers worker crashes
    def die_once(marker_path, counter_path):
        import os
        import signal

        with open(counter_path, "a") as f:
            f.write("x\n")
        if not os.path.exists(marker_path):
            open(marker_path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"

    assert ray.get(die_once.remote(str(marker), str(counter)), timeout=GET_TIMEOUT) == "survived"
    assert _attempts(counter) == 2


def test_worker_crash_retries_are_limited(cluster, tmp_path):
    ray = cluster
    counter = tmp_path / "count"

    @ray.remote(max_retries=1)
    def always_die(counter_path):
        import os
        import signal

        with open(counter_path, "a") as f:
            f.write("x\n")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(always_die.remote(str(counter)), timeout=GET_TIMEOUT)
    assert _attempts(counter) == 2


# --------------------------------------------------------------------------------- cancel


def test_cancel_running_task(cluster, tmp_path):
    ray = cluster
    loop = _looper(ray)
    started = tmp_path / "started"
    ref = loop.remote(str(started))
    _wait_for_file(started)
    start = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - start < 10.0, "the running task was not interrupted"
    ready, rest = ray.wait([ref], timeout=5)
    assert ready == [ref] and rest == []


def test_cancel_force_running_task(cluster, tmp_path):
    # Ray documents WorkerCrashedError for force=True (python/ray/_private/worker.py cancel());
    # older Ray and many users see TaskCancelledError. Either is accepted.
    ray = cluster
    loop = _looper(ray)
    started = tmp_path / "started"
    ref = loop.remote(str(started))
    _wait_for_file(started)
    start = time.monotonic()
    ray.cancel(ref, force=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=GET_TIMEOUT)
    assert time.monotonic() - start < 10.0

    @ray.remote
    def alive():
        return "alive"

    assert ray.get(alive.remote(), timeout=GET_TIMEOUT) == "alive"


def test_cancelled_task_is_not_retried(cluster, tmp_path):
    ray = cluster
    loop = _looper(ray, max_retries=3)
    started = tmp_path / "started"
    counter = tmp_path / "count"
    ref = loop.remote(str(started), 20.0, str(counter))
    _wait_for_file(started)
    ray.cancel(ref, force=True)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(ref, timeout=GET_TIMEOUT)
    # The task is over at the head once its error came: a retry would have been placed before it,
    # and would run ahead of these.
    assert ray.get([ray.remote(lambda: 1).remote() for _ in range(4)], timeout=GET_TIMEOUT) == [1] * 4
    assert _attempts(counter) == 1


def test_cancel_pending_task_never_runs(cluster, tmp_path):
    ray = cluster
    loop = _looper(ray)
    blockers = []
    for i in range(2):  # occupy both CPUs
        started = tmp_path / f"blocker{i}"
        blockers.append(loop.remote(str(started), 30.0))
    try:
        for i in range(2):
            _wait_for_file(tmp_path / f"blocker{i}")
        ran = tmp_path / "pending-ran"
        pending = loop.remote(str(ran), 0.0)
        time.sleep(0.3)
        assert not ran.exists()
        ray.cancel(pending)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(pending, timeout=GET_TIMEOUT)
    finally:
        for b in blockers:
            ray.cancel(b, force=True)
    for b in blockers:
        with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
            ray.get(b, timeout=GET_TIMEOUT)
    # CPUs are free again: a not-really-cancelled task, queued ahead of these, would run first.
    assert ray.get([ray.remote(lambda: 1).remote() for _ in range(4)], timeout=GET_TIMEOUT) == [1] * 4
    assert not ran.exists()


def test_cancel_finished_task_is_a_no_op(cluster):
    ray = cluster

    @ray.remote
    def done():
        return "done"

    ref = done.remote()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "done"
    ray.cancel(ref)
    ray.cancel(ref, force=True)
    assert ray.get(ref, timeout=GET_TIMEOUT) == "done"


def test_cancel_rejects_non_refs(cluster):
    ray = cluster
    with pytest.raises(TypeError):
        ray.cancel("not a ref")


def test_cancel_is_recursive_by_default(cluster, tmp_path):
    ray = cluster
    interrupted = tmp_path / "child-interrupted"
    child_started = tmp_path / "child-started"

    @ray.remote
    def child(interrupted, started):
        import time

        open(started, "w").close()
        deadline = time.time() + 15
        try:
            while time.time() < deadline:
                time.sleep(0.05)
        except KeyboardInterrupt:  # how a cancel reaches a running task
            open(interrupted, "w").close()
            raise
        return "child finished"

    @ray.remote
    def parent(interrupted, started):
        return ray.get(child.remote(interrupted, started))

    ref = parent.remote(str(interrupted), str(child_started))
    _wait_for_file(child_started)
    ray.cancel(ref)  # recursive=True is the default
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=GET_TIMEOUT)
    # Well before the child would end by itself (15 s).
    _wait_for_file(interrupted, timeout=10)  # the child task was cancelled with its parent
