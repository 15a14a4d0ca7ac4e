"""Ray 2.x actor semantics: creation, method calls and their ordering, concurrency (threaded and
async actors), handles passed around, named actors and namespaces, lifetimes, kill, restarts,
errors, num_returns, misuse errors, out-of-scope termination and actor output.

Actor classes are defined inside the tests on purpose: cloudpickle then ships them by value, so the
actor processes never need to import this test module. Their bodies use only the standard library
and the `ray` closure variable (the starburst module, pickled by reference).
"""

from __future__ import annotations

import gc
import json
import os
import re
import time

import psutil
import pytest
from conftest import cli, gone, head_caught_up, wait_for

GET_TIMEOUT = 60


# ----------------------------------------------------------------------------------- basics


def test_construct_with_args_call_methods_state_persists(cluster):
    ray = cluster

    @ray.remote
    class Counter:
        def __init__(self, start, step=1):
            self.value = start
            self.step = step

        def incr(self):
            self.value += self.step
            return self.value

        def get(self):
            return self.value

    c = Counter.remote(ray.put(10), step=5)  # a top-level ref argument arrives as its value
    assert isinstance(c, ray.ActorHandle)
    ref = c.incr.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 15
    assert ray.get([c.incr.remote() for _ in range(3)], timeout=GET_TIMEOUT) == [20, 25, 30]
    assert ray.get(c.get.remote(), timeout=GET_TIMEOUT) == 30
    # A second actor of the same class has its own state.
    d = Counter.remote(0)
    assert ray.get(d.incr.remote(), timeout=GET_TIMEOUT) == 1
    assert ray.get(c.get.remote(), timeout=GET_TIMEOUT) == 30


def test_method_arguments_refs_resolved_at_top_level_only(cluster):
    ray = cluster

    @ray.remote
    class Inspector:
        def kinds(self, top, nested):
            return type(top).__name__, type(nested[0]).__name__, ray.get(nested[0])

    ref = ray.put(41)
    i = Inspector.remote()
    top, nested, value = ray.get(i.kinds.remote(ref, [ref]), timeout=GET_TIMEOUT)
    assert top == "int"
    assert nested == "ObjectRef"
    assert value == 41


def test_call_on_an_unsaved_handle_runs_before_the_actor_ends(cluster):
    ray = cluster

    @ray.remote
    class A:
        def method(self):
            return 1

    # The handle is dropped at once; the call already made must still run.
    assert ray.get(A.remote().method.remote(), timeout=GET_TIMEOUT) == 1


def test_calls_wait_for_a_slow_constructor(cluster):
    ray = cluster

    @ray.remote
    class Slow:
        def __init__(self):
            time.sleep(1.0)
            self.ready = True

        def is_ready(self):
            return self.ready

    s = Slow.remote()
    assert ray.get([s.is_ready.remote() for _ in range(5)], timeout=GET_TIMEOUT) == [True] * 5


def test_calls_run_in_submission_order_even_behind_a_pending_argument(cluster):
    ray = cluster

    @ray.remote
    def slow(x):
        time.sleep(1.0)
        return x

    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def append(self, x):
            self.items.append(x)
            return len(self.items)

        def items_(self):
            return list(self.items)

    log = Log.remote()
    ray.get(log.items_.remote(), timeout=GET_TIMEOUT)  # the actor is up
    first = log.append.remote(slow.remote("first"))  # its argument is not ready for ~1 s
    second = log.append.remote("second")
    rest = [log.append.remote(i) for i in range(50)]
    assert ray.get(second, timeout=GET_TIMEOUT) == 2
    assert ray.get(first, timeout=GET_TIMEOUT) == 1
    assert ray.get(rest, timeout=GET_TIMEOUT) == list(range(3, 53))
    assert ray.get(log.items_.remote(), timeout=GET_TIMEOUT) == ["first", "second", *range(50)]


def test_each_callers_calls_stay_in_order_across_forked_handles(cluster):
    ray = cluster

    @ray.remote
    class Queue:
        def __init__(self):
            self.items = []

        def put(self, key, item):
            self.items.append((key, item))

        def read(self):
            return list(self.items)

    @ray.remote
    def fork(queue, key, n):
        last = None
        for i in range(n):
            last = queue.put.remote(key, i)
        return ray.get(last)

    q = Queue.remote()
    forks = [fork.remote(q, k, 40) for k in range(4)]
    for i in range(40):
        q.put.remote("driver", i)
    ray.get(forks, timeout=GET_TIMEOUT)
    items = ray.get(q.read.remote(), timeout=GET_TIMEOUT)
    assert len(items) == 5 * 40
    for key in [0, 1, 2, 3, "driver"]:
        assert [i for k, i in items if k == key] == list(range(40)), key


# ------------------------------------------------------------------------------ concurrency


class _Sleeper:
    """Records how many of its calls ran at once (``peak_``)."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def nap(self, t):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(t)
        with self.lock:
            self.active -= 1

    def peak_(self):
        return self.peak


class _AsyncSleeper:
    """``_Sleeper`` as an async actor: its naps overlap on one event loop."""

    def __init__(self):
        self.active = 0
        self.peak = 0

    async def nap(self, t):
        import asyncio

        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(t)
        self.active -= 1
        return t

    async def peak_(self):
        return self.peak


def test_threaded_actor_runs_max_concurrency_calls_at_once(cluster):
    ray = cluster

    Sleeper = ray.remote(max_concurrency=4)(_Sleeper)
    s = Sleeper.remote()
    assert ray.get(s.peak_.remote(), timeout=GET_TIMEOUT) == 0
    start = time.monotonic()
    ray.get([s.nap.remote(0.4) for _ in range(8)], timeout=GET_TIMEOUT)
    elapsed = time.monotonic() - start
    assert ray.get(s.peak_.remote(), timeout=GET_TIMEOUT) == 4
    assert 0.75 <= elapsed < 2.4, elapsed  # two waves of 4 (serially: 3.2 s)


def test_default_actor_runs_one_call_at_a_time(cluster):
    ray = cluster

    Sleeper = ray.remote(_Sleeper)
    s = Sleeper.remote()
    ray.get([s.nap.remote(0.05) for _ in range(6)], timeout=GET_TIMEOUT)
    assert ray.get(s.peak_.remote(), timeout=GET_TIMEOUT) == 1


def test_async_actor_runs_many_awaits_concurrently(cluster):
    ray = cluster

    AsyncSleeper = ray.remote(_AsyncSleeper)
    a = AsyncSleeper.remote()
    assert ray.get(a.peak_.remote(), timeout=GET_TIMEOUT) == 0
    start = time.monotonic()
    assert ray.get([a.nap.remote(0.2) for _ in range(50)], timeout=GET_TIMEOUT) == [0.2] * 50
    elapsed = time.monotonic() - start
    assert elapsed < 4.0, elapsed  # serially: 10 s
    assert ray.get(a.peak_.remote(), timeout=GET_TIMEOUT) >= 25


def test_async_actor_max_concurrency_limits_concurrency(cluster):
    ray = cluster

    AsyncSleeper = ray.remote(max_concurrency=3)(_AsyncSleeper)
    a = AsyncSleeper.remote()
    ray.get(a.peak_.remote(), timeout=GET_TIMEOUT)
    start = time.monotonic()
    ray.get([a.nap.remote(0.2) for _ in range(9)], timeout=GET_TIMEOUT)
    elapsed = time.monotonic() - start
    assert ray.get(a.peak_.remote(), timeout=GET_TIMEOUT) == 3
    assert elapsed >= 0.55, elapsed  # at least three waves of 0.2 s


def test_async_method_exception_is_users_class_and_actor_survives(cluster):
    ray = cluster

    @ray.remote
    class AsyncService:
        def __init__(self):
            self.n = 0

        async def fail(self):
            raise KeyError("no such entry")

        async def incr(self):
            self.n += 1
            return self.n

    a = AsyncService.remote()
    assert ray.get(a.incr.remote(), timeout=GET_TIMEOUT) == 1
    with pytest.raises(KeyError) as info:
        ray.get(a.fail.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert ray.get(a.incr.remote(), timeout=GET_TIMEOUT) == 2


# ------------------------------------------------------------------------- handles passed on


def test_actor_submits_tasks_and_gets_their_results(cluster):
    ray = cluster

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Mapper:
        def run(self, xs):
            return sum(ray.get([square.remote(x) for x in xs]))

    m = Mapper.remote()
    assert ray.get(m.run.remote(list(range(10))), timeout=GET_TIMEOUT) == sum(x * x for x in range(10))


def test_handles_passed_to_tasks_and_actors(cluster):
    ray = cluster

    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def add(self, n):
            self.value += n
            return self.value

        def get(self):
            return self.value

    @ray.remote
    def add_from_task(counter, n):
        return ray.get(counter.add.remote(n))

    @ray.remote
    def add_from_list(handles, n):
        return [ray.get(h.add.remote(n)) for h in handles]

    @ray.remote
    class Caller:
        def __init__(self, target):
            self.target = target

        def call(self, n):
            return ray.get(self.target.add.remote(n))

        def call_with(self, other, n):
            return ray.get(other.add.remote(n))

        def pid(self):
            return os.getpid()

    c = Counter.remote()
    assert ray.get(add_from_task.remote(c, 1), timeout=GET_TIMEOUT) == 1
    assert ray.get(add_from_list.remote([c], 10), timeout=GET_TIMEOUT) == [11]
    caller = Caller.remote(c)
    assert ray.get(caller.call.remote(100), timeout=GET_TIMEOUT) == 111
    assert ray.get(caller.call_with.remote(c, 1000), timeout=GET_TIMEOUT) == 1111
    caller_pid = ray.get(caller.pid.remote(), timeout=GET_TIMEOUT)
    # The driver's handle still works after the borrowers are done with theirs: the caller's
    # process has ended (its handle to c went with it) and the head has applied that.
    del caller
    gc.collect()
    wait_for(lambda: gone(caller_pid), 30, "the caller actor to end with its last handle")
    head_caught_up(ray)
    assert ray.get(c.get.remote(), timeout=GET_TIMEOUT) == 1111


def test_handle_returned_from_a_task_is_usable(cluster):
    ray = cluster

    @ray.remote
    class Box:
        def __init__(self, v):
            self.v = v

        def get(self):
            return self.v

    @ray.remote
    def wrap(h):
        return [h, {"h": h}]

    b = Box.remote("boxed")
    lst = ray.get(wrap.remote(b), timeout=GET_TIMEOUT)
    assert ray.get(lst[0].get.remote(), timeout=GET_TIMEOUT) == "boxed"
    assert ray.get(lst[1]["h"].get.remote(), timeout=GET_TIMEOUT) == "boxed"


# ---------------------------------------------------------------------------- named actors


def test_named_actor_get_actor_duplicates_and_get_if_exists(cluster):
    ray = cluster

    @ray.remote
    class Counter:
        def __init__(self, start):
            self.value = start

        def incr(self):
            self.value += 1
            return self.value

    a = Counter.options(name="test-named-counter").remote(0)
    assert ray.get(a.incr.remote(), timeout=GET_TIMEOUT) == 1
    b = ray.get_actor("test-named-counter")
    assert ray.get(b.incr.remote(), timeout=GET_TIMEOUT) == 2
    with pytest.raises(ValueError):
        Counter.options(name="test-named-counter").remote(0)
    # get_if_exists: the existing actor, the new constructor arguments ignored.
    c = Counter.options(name="test-named-counter", get_if_exists=True).remote(1000)
    assert ray.get(c.incr.remote(), timeout=GET_TIMEOUT) == 3
    # get_if_exists with a new name creates it.
    d = Counter.options(name="test-named-counter-2", get_if_exists=True).remote(1000)
    assert ray.get(d.incr.remote(), timeout=GET_TIMEOUT) == 1001
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor-anywhere")
    # Names live in a namespace: the same name elsewhere is another actor.
    with pytest.raises(ValueError):
        ray.get_actor("test-named-counter", namespace="elsewhere")
    e = Counter.options(name="test-named-counter", namespace="elsewhere").remote(500)
    assert ray.get(e.incr.remote(), timeout=GET_TIMEOUT) == 501
    f = ray.get_actor("test-named-counter", namespace="elsewhere")
    assert ray.get(f.incr.remote(), timeout=GET_TIMEOUT) == 502
    assert ray.get(a.incr.remote(), timeout=GET_TIMEOUT) == 4

    # Tasks run in their driver's namespace.
    @ray.remote
    def incr_by_name(name):
        return ray.get(ray.get_actor(name).incr.remote())

    assert ray.get(incr_by_name.remote("test-named-counter"), timeout=GET_TIMEOUT) == 5


def test_named_actor_name_is_freed_when_killed(cluster):
    ray = cluster

    @ray.remote
    class A:
        def ping(self):
            return "pong"

    a = A.options(name="test-named-freed").remote()
    assert ray.get(a.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    ray.kill(a)
    wait_for(lambda: _lookup_fails(ray, "test-named-freed"), 10, "the actor\'s name to be freed")
    b = A.options(name="test-named-freed").remote()
    assert ray.get(b.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    # Out of scope frees the name too.
    del b
    gc.collect()
    wait_for(lambda: _lookup_fails(ray, "test-named-freed"), 10, "the actor\'s name to be freed")


def _lookup_fails(ray, name, namespace=None) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


@pytest.mark.slow
def test_namespaces_across_drivers_and_detached_lifetime(tmp_path, run_script):
    home = tmp_path / "up-home"
    up = cli(home, "up", "--num-cpus", "2")
    assert up.returncode == 0, up.stderr
    try:
        first = run_script(
            """
            import json, os, starburst as ray
            ray.init(namespace="team-a")

            @ray.remote
            class Keeper:
                def __init__(self):
                    self.n = 0
                def incr(self):
                    self.n += 1
                    return self.n
                def pid(self):
                    return os.getpid()

            k = Keeper.options(name="keeper", lifetime="detached").remote()
            assert ray.get(k.incr.remote()) == 1
            t = Keeper.options(name="temporary").remote()   # not detached: ends with this driver
            print(json.dumps({"detached": ray.get(k.pid.remote()), "temporary": ray.get(t.pid.remote())}))
            """,
            env={"STARBURST_HOME": str(home)},
        )
        pids = json.loads(first.stdout.strip().splitlines()[-1])
        # Once the driver's non-detached actor is gone, its cleanup has happened: then the
        # detached one must still live.
        wait_for(lambda: gone(pids["temporary"]), 10, "a non-detached actor to end with its driver")
        assert not gone(pids["detached"]), "the detached actor did not outlive its driver"

        second = run_script(
            """
            import json, os, time, starburst as ray
            ray.init(namespace="team-b")
            out = {}
            try:
                ray.get_actor("keeper")
                out["visible_from_b"] = True
            except ValueError:
                out["visible_from_b"] = False
            k = ray.get_actor("keeper", namespace="team-a")
            out["incr"] = ray.get(k.incr.remote())
            try:
                ray.get_actor("temporary", namespace="team-a")
                out["temporary_found"] = True
            except ValueError:
                out["temporary_found"] = False
            ray.kill(k)
            try:
                ray.get(k.incr.remote())
                out["after_kill"] = "no error"
            except ray.exceptions.ActorDiedError as e:
                out["after_kill"] = "ActorDiedError"
            deadline = time.monotonic() + 10
            while True:
                try:
                    ray.get_actor("keeper", namespace="team-a")
                except ValueError:
                    out["lookup_after_kill"] = "ValueError"
                    break
                if time.monotonic() > deadline:
                    out["lookup_after_kill"] = "still found"
                    break
                time.sleep(0.1)
            print(json.dumps(out))
            """,
            env={"STARBURST_HOME": str(home)},
        )
        out = json.loads(second.stdout.strip().splitlines()[-1])
        assert out == {
            "visible_from_b": False,
            "incr": 2,
            "temporary_found": False,
            "after_kill": "ActorDiedError",
            "lookup_after_kill": "ValueError",
        }
        wait_for(lambda: gone(pids["detached"]), 10, "the actor\'s process to exit")
    finally:
        down = cli(home, "down")
    assert down.returncode == 0, down.stderr


def test_init_namespace_scopes_named_actors(run_script):
    proc = run_script(
        """
        import starburst as ray
        ray.init(num_cpus=1, namespace="alpha")

        @ray.remote
        class A:
            def where(self):
                return "alpha-actor"

        a = A.options(name="svc").remote()
        assert ray.get(a.where.remote()) == "alpha-actor"
        assert ray.get(ray.get_actor("svc").where.remote()) == "alpha-actor"
        assert ray.get(ray.get_actor("svc", namespace="alpha").where.remote()) == "alpha-actor"
        try:
            ray.get_actor("svc", namespace="beta")
        except ValueError:
            print("beta: not found")
        else:
            print("beta: found")
        ray.shutdown()
        """
    )
    assert "beta: not found" in proc.stdout


# ------------------------------------------------------------------------ kill and restarts


def test_kill_makes_later_calls_raise_actor_died_error(cluster):
    ray = cluster

    @ray.remote
    class Hang:
        def ping(self):
            return "pong"

        def hang(self):
            while True:
                time.sleep(1)

    a = Hang.remote()
    assert ray.get(a.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    running = a.hang.remote()
    queued = a.ping.remote()  # behind the hanging call
    ready, _ = ray.wait([running, queued], timeout=0.5)
    assert ready == []
    ray.kill(a)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(running, timeout=GET_TIMEOUT)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(queued, timeout=GET_TIMEOUT)
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(a.ping.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayActorError)
    with pytest.raises(ValueError):
        ray.kill("not an actor handle")


def test_kill_with_restart_allowed_restarts_with_fresh_state(cluster):
    ray = cluster

    @ray.remote(max_restarts=1)
    class Counter:
        def __init__(self):
            self.value = 0

        def incr(self):
            self.value += 1
            return self.value, os.getpid()

    c = Counter.remote()
    assert ray.get(c.incr.remote(), timeout=GET_TIMEOUT)[0] == 1
    value, pid = ray.get(c.incr.remote(), timeout=GET_TIMEOUT)
    assert value == 2
    ray.kill(c, no_restart=False)
    wait_for(lambda: gone(pid), 10, "the actor\'s process to exit")
    # Calls made while it restarts may fail (at-most-once); once restarted, its state is fresh.
    result = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            result = ray.get(c.incr.remote(), timeout=GET_TIMEOUT)
            break
        except ray.exceptions.RayActorError:
            time.sleep(0.2)
    assert result is not None, "the actor was not restarted"
    assert result[0] == 1 and result[1] != pid
    # A kill with no_restart=True is final, whatever max_restarts allows.
    ray.kill(c)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(c.incr.remote(), timeout=GET_TIMEOUT)


def test_sigkilled_actor_without_restarts_is_dead(cluster):
    ray = cluster

    @ray.remote(max_restarts=0)
    class Fragile:
        def die(self):
            os.kill(os.getpid(), 9)

        def ping(self):
            return "pong"

    f = Fragile.remote()
    assert ray.get(f.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(f.die.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(f.ping.remote(), timeout=GET_TIMEOUT)


def test_sigkilled_actor_restarts_and_retries_the_call(cluster, tmp_path):
    ray = cluster
    marker = str(tmp_path / "died-once")

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Phoenix:
        def __init__(self, marker):
            self.marker = marker
            self.calls = 0

        def pid(self):
            return os.getpid()

        def work(self):
            self.calls += 1
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), 9)
            return "done", self.calls, os.getpid()

    p = Phoenix.remote(marker)
    first_pid = ray.get(p.pid.remote(), timeout=GET_TIMEOUT)
    status, calls, pid = ray.get(p.work.remote(), timeout=GET_TIMEOUT)
    assert status == "done"
    assert calls == 1  # the constructor ran again: state was reset
    assert pid != first_pid
    assert os.path.exists(marker)
    assert ray.get(p.work.remote(), timeout=GET_TIMEOUT)[1] == 2


# ----------------------------------------------------------------------------------- errors


def test_constructor_error_fails_method_calls_with_actor_died_error(cluster):
    ray = cluster

    @ray.remote
    class Broken:
        def __init__(self, x):
            raise ValueError(f"bad config {x}")

        def ping(self):
            return "pong"

    b = Broken.remote(42)
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(b.ping.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayActorError)
    message = str(info.value)
    assert "bad config 42" in message
    assert "creation task" in message
    # Every later call fails the same way.
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(b.ping.remote(), timeout=GET_TIMEOUT)


def test_method_exception_is_task_error_of_users_class_and_actor_survives(cluster):
    ray = cluster

    class InsufficientFunds(Exception):
        pass

    @ray.remote
    class Account:
        def __init__(self):
            self.balance = 10

        def withdraw(self, n):
            if n > self.balance:
                raise InsufficientFunds(f"balance {self.balance} < {n}")
            self.balance -= n
            return self.balance

    acct = Account.remote()
    assert ray.get(acct.withdraw.remote(3), timeout=GET_TIMEOUT) == 7
    with pytest.raises(InsufficientFunds) as info:
        ray.get(acct.withdraw.remote(100), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert "balance 7 < 100" in str(info.value)
    assert ray.get(acct.withdraw.remote(2), timeout=GET_TIMEOUT) == 5


# ------------------------------------------------------------------------------ num_returns


def test_method_num_returns_via_decorator_and_options(cluster):
    ray = cluster

    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def pair(self, x):
            return x, x * 2

        def triple(self, x):
            return x, x + 1, x + 2

        def single(self):
            return (1, 2)

    s = Splitter.remote()
    a, b = s.pair.remote(5)
    assert isinstance(a, ray.ObjectRef) and isinstance(b, ray.ObjectRef)
    assert ray.get([a, b], timeout=GET_TIMEOUT) == [5, 10]
    refs = s.triple.options(num_returns=3).remote(7)
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs, timeout=GET_TIMEOUT) == [7, 8, 9]
    x, y = s.single.options(num_returns=2).remote()
    assert ray.get([x, y], timeout=GET_TIMEOUT) == [1, 2]
    assert ray.get(s.single.remote(), timeout=GET_TIMEOUT) == (1, 2)


# ------------------------------------------------------------------------------------ misuse


def test_calling_a_method_directly_raises_type_error(cluster):
    ray = cluster

    @ray.remote
    class A:
        def f(self):
            return 1

    a = A.remote()
    with pytest.raises(TypeError) as info:
        a.f()
    assert ".remote(" in str(info.value)
    assert ray.get(a.f.remote(), timeout=GET_TIMEOUT) == 1


def test_instantiating_an_actor_class_directly_raises_type_error(cluster):
    ray = cluster

    @ray.remote
    class A:
        pass

    with pytest.raises(TypeError) as info:
        A()
    assert ".remote(" in str(info.value)


def test_unknown_actor_option_raises_value_error(cluster):
    ray = cluster

    class A:
        def f(self):
            return 1

    with pytest.raises(ValueError):
        ray.remote(not_an_option=1)(A)
    RemoteA = ray.remote(A)
    with pytest.raises(ValueError):
        RemoteA.options(not_an_option=1)


def test_actor_name_validation(cluster):
    ray = cluster

    @ray.remote
    class A:
        pass

    with pytest.raises(ValueError):
        A.options(name="").remote()
    with pytest.raises(TypeError):  # Ray: "name must be None or a string"
        A.options(name=1).remote()


# ---------------------------------------------------------------------------------- lifetime


def test_actor_ends_when_its_last_handle_goes_out_of_scope(cluster):
    ray = cluster

    @ray.remote
    class Worker:
        def pid(self):
            return os.getpid()

    w = Worker.remote()
    pid = ray.get(w.pid.remote(), timeout=GET_TIMEOUT)
    assert psutil.pid_exists(pid)
    head_caught_up(ray)
    assert ray.get(w.pid.remote(), timeout=GET_TIMEOUT) == pid  # alive while the handle is held
    assert not gone(pid)
    del w
    gc.collect()
    wait_for(lambda: gone(pid), 10, "the actor to end with its last handle")


def test_out_of_scope_actor_finishes_pending_calls_and_borrowers_keep_it(cluster):
    ray = cluster

    @ray.remote(max_restarts=3)
    class Worker:
        def pid(self):
            return os.getpid()

        def slow(self, t):
            time.sleep(t)
            return "finished"

    @ray.remote
    def later(handle, delay):
        time.sleep(delay)
        return ray.get(handle.slow.remote(0))

    w = Worker.remote()
    pid = ray.get(w.pid.remote(), timeout=GET_TIMEOUT)
    pending = w.slow.remote(0.5)
    borrowed = later.remote(w, 1.5)  # uses its copy of the handle only after the driver let go
    del w
    gc.collect()
    assert ray.get(pending, timeout=GET_TIMEOUT) == "finished"
    assert ray.get(borrowed, timeout=GET_TIMEOUT) == "finished"
    # Once the borrower is done too, the actor ends, and is not restarted (max_restarts).
    wait_for(lambda: gone(pid), 10, "the actor to end with its borrowed handle")


def test_child_actor_ends_with_the_actor_that_created_it(cluster):
    ray = cluster

    @ray.remote
    class Child:
        def pid(self):
            return os.getpid()

    @ray.remote
    class Parent:
        def __init__(self):
            self.child = Child.remote()

        def child_pid(self):
            return ray.get(self.child.pid.remote())

    p = Parent.remote()
    child_pid = ray.get(p.child_pid.remote(), timeout=GET_TIMEOUT)
    assert not gone(child_pid)
    ray.kill(p)
    wait_for(lambda: gone(child_pid), 10, "a child actor to end with its owner")


def test_ray_terminate_runs_pending_calls_then_ends_the_actor(cluster):
    ray = cluster

    @ray.remote
    class Worker:
        def pid(self):
            return os.getpid()

        def slow(self, t):
            time.sleep(t)
            return "finished"

    w = Worker.remote()
    pid = ray.get(w.pid.remote(), timeout=GET_TIMEOUT)
    pending = w.slow.remote(0.5)
    w.__ray_terminate__.remote()
    assert ray.get(pending, timeout=GET_TIMEOUT) == "finished"
    wait_for(lambda: gone(pid), 10, "the actor\'s process to exit")
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(w.pid.remote(), timeout=GET_TIMEOUT)


def test_detached_actor_is_not_collected_with_its_handles(cluster):
    ray = cluster

    @ray.remote
    class Keeper:
        def pid(self):
            return os.getpid()

    k = Keeper.options(name="test-detached-keeper", lifetime="detached").remote()
    pid = ray.get(k.pid.remote(), timeout=GET_TIMEOUT)
    del k
    gc.collect()
    head_caught_up(ray)  # the release of the last handle has been applied: it changed nothing
    assert not gone(pid), "a detached actor was collected when its handle went out of scope"
    again = ray.get_actor("test-detached-keeper")
    assert ray.get(again.pid.remote(), timeout=GET_TIMEOUT) == pid
    ray.kill(again)
    wait_for(lambda: gone(pid), 10, "the actor\'s process to exit")


def test_detached_actor_needs_no_name(cluster):
    ray = cluster

    @ray.remote
    class Anonymous:
        def ping(self):
            return "pong"

    a = Anonymous.options(lifetime="detached").remote()  # Ray allows unnamed detached actors
    assert ray.get(a.ping.remote(), timeout=GET_TIMEOUT) == "pong"
    ray.kill(a)


def test_print_in_actor_reaches_driver_with_class_prefix(run_script):
    proc = run_script(
        """
        import starburst as ray
        ray.init(num_cpus=1)

        import sys

        @ray.remote
        class Greeter:
            def __init__(self):
                print("constructing the greeter", flush=True)

            def greet(self, who):
                print(f"hello from the actor to {who}", flush=True)
                print("a warning on stderr", file=sys.stderr, flush=True)
                return "ok"

        g = Greeter.remote()
        assert ray.get(g.greet.remote("driver")) == "ok"
        ray.shutdown()
        """
    )
    assert re.search(r"^\(Greeter pid=\d+\) hello from the actor to driver$", proc.stdout, re.M), (
        proc.stdout, proc.stderr)
    assert re.search(r"^\(Greeter pid=\d+\) a warning on stderr$", proc.stderr, re.M), (
        proc.stdout, proc.stderr)
    # Ray tags the constructor's output with the class name too (not "Greeter.__init__").
    assert re.search(r"^\(Greeter pid=\d+\) constructing the greeter$", proc.stdout, re.M), (
        proc.stdout, proc.stderr)


def test_runtime_context_inside_tasks_and_actors(cluster):
    ray = cluster

    @ray.remote(num_cpus=1)
    def where():
        ctx = ray.get_runtime_context()
        return ctx.get_task_id(), ctx.get_actor_id(), ctx.get_assigned_resources(), ctx.get_job_id(), ctx.is_canceled()

    task_id, actor_id, resources, job_id, canceled = ray.get(where.remote(), timeout=60)
    assert task_id and actor_id is None and resources == {"CPU": 1.0} and not canceled
    assert job_id == ray.get_runtime_context().get_job_id()

    @ray.remote
    class Me:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.current_actor

        def ping(self):
            return "pong"

    me = Me.remote()
    actor_id, handle = ray.get(me.ids.remote(), timeout=60)
    assert actor_id == me._actor_id.hex()
    assert ray.get(handle.ping.remote(), timeout=60) == "pong"
    assert ray.cluster_resources()["CPU"] == 2.0
    assert 0 <= ray.available_resources()["CPU"] <= 2.0
    assert len(ray.nodes()) == 1


def test_task_sees_its_cancellation(cluster, tmp_path):
    ray = cluster
    flag = tmp_path / "saw-cancel"

    started = tmp_path / "started"

    @ray.remote
    def polite(flag, started):
        import time

        open(started, "w").close()
        try:
            for _ in range(200):
                time.sleep(0.05)
        except KeyboardInterrupt:
            if ray.get_runtime_context().is_canceled():
                open(flag, "w").close()
            raise

    ref = polite.remote(str(flag), str(started))
    wait_for(started.exists, 60, "the task to start")
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)
    assert flag.exists()
