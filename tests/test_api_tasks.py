"""Ray 2.x task API semantics: @remote, .options(), num_returns, arguments, refs in containers,
nested tasks, option validation.

Remote functions are defined inside the tests on purpose: cloudpickle then ships them by value, so
the workers never need to import this test module. Their bodies use only the standard library,
numpy and the `ray` closure variable (the starburst module, pickled by reference).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

GET_TIMEOUT = 60


# ----------------------------------------------------------------------------------- basics


def test_bare_decorator_and_remote_returns_objectref(cluster):
    ray = cluster

    @ray.remote
    def add(a, b):
        return a + b

    ref = add.remote(1, 2)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 3


def test_remote_as_plain_function_call(cluster):
    ray = cluster

    def mul(a, b):
        return a * b

    remote_mul = ray.remote(mul)
    assert ray.get(remote_mul.remote(6, 7), timeout=GET_TIMEOUT) == 42


def test_decorator_with_options(cluster):
    ray = cluster

    @ray.remote(num_cpus=1, max_retries=1, num_returns=1)
    def ident(x):
        return x

    assert ray.get(ident.remote("v"), timeout=GET_TIMEOUT) == "v"


def test_direct_call_of_remote_function_raises_type_error(cluster):
    ray = cluster

    @ray.remote
    def f(x):
        return x

    with pytest.raises(TypeError) as info:
        f(1)
    assert ".remote(" in str(info.value)


def test_task_returning_none(cluster):
    ray = cluster

    @ray.remote
    def nothing():
        pass

    assert ray.get(nothing.remote(), timeout=GET_TIMEOUT) is None


def test_many_small_tasks(cluster):
    ray = cluster

    @ray.remote
    def square(i):
        return i * i

    refs = [square.remote(i) for i in range(100)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == [i * i for i in range(100)]


def test_tasks_run_in_other_processes(cluster):
    ray = cluster

    @ray.remote
    def pid():
        import os

        return os.getpid()

    assert ray.get(pid.remote(), timeout=GET_TIMEOUT) != os.getpid()


def test_is_initialized_inside_task(cluster):
    ray = cluster

    @ray.remote
    def inside():
        return ray.is_initialized()

    assert ray.get(inside.remote(), timeout=GET_TIMEOUT) is True


def test_closure_captures_local_values(cluster):
    ray = cluster
    offset = 1000
    table = {"a": 1, "b": 2}

    @ray.remote
    def lookup(key):
        return table[key] + offset

    assert ray.get([lookup.remote("a"), lookup.remote("b")], timeout=GET_TIMEOUT) == [1001, 1002]


# ----------------------------------------------------------------------------------- num_returns


def test_num_returns_two_in_decorator(cluster):
    ray = cluster

    @ray.remote(num_returns=2)
    def pair():
        return "left", "right"

    refs = pair.remote()
    assert isinstance(refs, list) and len(refs) == 2
    a, b = refs
    assert isinstance(a, ray.ObjectRef) and isinstance(b, ray.ObjectRef)
    assert a != b
    assert ray.get(a, timeout=GET_TIMEOUT) == "left"
    assert ray.get(b, timeout=GET_TIMEOUT) == "right"


def test_num_returns_via_options_does_not_change_original(cluster):
    ray = cluster

    @ray.remote
    def three():
        return 1, 2, 3

    refs = three.options(num_returns=3).remote()
    assert len(refs) == 3
    assert ray.get(refs, timeout=GET_TIMEOUT) == [1, 2, 3]
    # the original function still has one return: the tuple
    single = three.remote()
    assert isinstance(single, ray.ObjectRef)
    assert ray.get(single, timeout=GET_TIMEOUT) == (1, 2, 3)


def test_num_returns_one_is_a_single_ref(cluster):
    ray = cluster

    @ray.remote(num_returns=1)
    def one():
        return [1, 2]

    ref = one.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == [1, 2]


# ----------------------------------------------------------------------------------- options


def test_options_resources_accepted_and_task_runs(cluster):
    ray = cluster

    @ray.remote
    def ok():
        return "ok"

    variants = [
        dict(num_cpus=0),
        dict(num_cpus=0.5),
        dict(num_cpus=2),  # the whole cluster
        dict(num_gpus=0),
        dict(memory=32 * 1024 * 1024),
        dict(name="a_custom_task_name"),
        dict(max_retries=0),
        dict(max_retries=-1),
        dict(retry_exceptions=True),
        dict(retry_exceptions=[ValueError, KeyError]),
        dict(resources={}),
        dict(runtime_env={}),
    ]
    refs = [ok.options(**v).remote() for v in variants]
    assert ray.get(refs, timeout=GET_TIMEOUT) == ["ok"] * len(variants)


def test_fractional_cpus_above_one_accepted(cluster):
    # Ray >= 2.8 (PR #39293) accepts fractional quantities above 1 for non-unit resources
    # such as CPU; only unit-instance resources (GPU, TPU, neuron cores) must be whole above 1.
    ray = cluster

    @ray.remote(num_cpus=1.5)
    def ok():
        return "ok"

    assert ray.get(ok.remote(), timeout=GET_TIMEOUT) == "ok"
    assert ray.get(ok.options(num_cpus=1.5).remote(), timeout=GET_TIMEOUT) == "ok"


def test_runtime_env_env_vars_option(cluster):
    ray = cluster

    @ray.remote
    def read_env():
        import os

        return os.environ.get("STARBURST_TEST_VAR")

    ref = read_env.options(runtime_env={"env_vars": {"STARBURST_TEST_VAR": "hello-env"}}).remote()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "hello-env"


def test_unknown_option_in_decorator_raises_value_error_listing_valid(cluster):
    ray = cluster

    def f():
        return 1

    with pytest.raises(ValueError) as info:
        ray.remote(no_such_option=1)(f)
    msg = str(info.value)
    assert "no_such_option" in msg
    assert "num_cpus" in msg and "num_returns" in msg  # lists the valid ones


def test_unknown_option_in_options_raises_value_error(cluster):
    ray = cluster

    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError) as info:
        f.options(no_such_option=1)
    msg = str(info.value)
    assert "no_such_option" in msg
    assert "num_cpus" in msg


INVALID_OPTIONS = [
    (dict(num_cpus=-1), ValueError),
    (dict(num_cpus=-0.5), ValueError),
    (dict(num_gpus=-1), ValueError),
    (dict(memory=-1), ValueError),
    (dict(num_cpus=0.00001), ValueError),  # finer than Ray's 0.0001 resource precision
    (dict(resources={"custom": -1}), ValueError),
    (dict(resources={"CPU": 1}), ValueError),  # must use num_cpus
    (dict(resources={"GPU": 1}), ValueError),  # must use num_gpus
    (dict(num_returns=-1), ValueError),
    (dict(max_retries=-2), ValueError),  # -1 means infinite; below that is invalid
    (dict(retry_exceptions=[int]), ValueError),  # not exception classes
    (dict(num_cpus="1"), TypeError),
    (dict(max_retries=1.5), TypeError),
    (dict(retry_exceptions="yes"), TypeError),
    (dict(resources=[("custom", 1)]), TypeError),
]


@pytest.mark.parametrize("opts,exc", INVALID_OPTIONS, ids=[repr(o) for o, _ in INVALID_OPTIONS])
def test_invalid_option_rejected_at_decoration(cluster, opts, exc):
    ray = cluster

    def f():
        return 1

    with pytest.raises(exc):
        ray.remote(**opts)(f)


@pytest.mark.parametrize("opts,exc", INVALID_OPTIONS, ids=[repr(o) for o, _ in INVALID_OPTIONS])
def test_invalid_option_rejected_by_options(cluster, opts, exc):
    ray = cluster

    @ray.remote
    def f():
        return 1

    with pytest.raises(exc):
        f.options(**opts)


# ----------------------------------------------------------------------------------- arguments


def test_positional_keyword_default_and_varargs(cluster):
    ray = cluster

    @ray.remote
    def sig(a, b=10, *rest, c=100, **extra):
        return a, b, rest, c, extra

    assert ray.get(sig.remote(1), timeout=GET_TIMEOUT) == (1, 10, (), 100, {})
    assert ray.get(sig.remote(1, 2, 3, 4, c=5, d=6), timeout=GET_TIMEOUT) == (1, 2, (3, 4), 5, {"d": 6})
    assert ray.get(sig.remote(a=7, c=8), timeout=GET_TIMEOUT) == (7, 10, (), 8, {})


def test_wrong_arguments_fail(cluster):
    # Ray binds the arguments against the signature at .remote() and raises TypeError there;
    # accept that, or a task error that is a TypeError when the ref is fetched.
    ray = cluster

    @ray.remote
    def two(a, b):
        return a + b

    with pytest.raises(TypeError):
        ray.get(two.remote(1), timeout=GET_TIMEOUT)
    with pytest.raises(TypeError):
        ray.get(two.remote(1, 2, 3), timeout=GET_TIMEOUT)


def test_top_level_ref_arguments_are_resolved(cluster):
    ray = cluster

    @ray.remote
    def describe(x, y=None):
        return type(x).__name__, x, type(y).__name__, y

    x = ray.put(5)
    y = ray.put("why")
    out = ray.get(describe.remote(x, y=y), timeout=GET_TIMEOUT)
    assert out == ("int", 5, "str", "why")


def test_same_ref_passed_twice(cluster):
    ray = cluster

    @ray.remote
    def add(a, b):
        return a + b

    r = ray.put(21)
    assert ray.get(add.remote(r, r), timeout=GET_TIMEOUT) == 42


def test_task_output_as_input_chains(cluster):
    ray = cluster

    @ray.remote
    def inc(x):
        return x + 1

    ref = inc.remote(0)
    for _ in range(5):
        ref = inc.remote(ref)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 6


def test_refs_nested_in_containers_stay_refs(cluster):
    ray = cluster

    @ray.remote
    def inspect_args(items, mapping):
        kinds = [isinstance(i, ray.ObjectRef) for i in items] + [
            isinstance(mapping["k"], ray.ObjectRef)
        ]
        values = ray.get(list(items)) + [ray.get(mapping["k"])]
        return kinds, values

    @ray.remote
    def produce(v):
        return v

    items = [ray.put("a"), produce.remote("b")]
    mapping = {"k": ray.put("c")}
    kinds, values = ray.get(inspect_args.remote(items, mapping), timeout=GET_TIMEOUT)
    assert kinds == [True, True, True]
    assert values == ["a", "b", "c"]


def test_ref_round_trips_through_a_task(cluster):
    ray = cluster

    @ray.remote
    def echo(box):
        return box

    ref = ray.put("payload")
    [back] = ray.get(echo.remote([ref]), timeout=GET_TIMEOUT)
    assert isinstance(back, ray.ObjectRef)
    assert back == ref and hash(back) == hash(ref) and back.hex() == ref.hex()
    assert ray.get(back, timeout=GET_TIMEOUT) == "payload"


def test_task_returning_a_ref(cluster):
    ray = cluster

    @ray.remote
    def inner():
        return "deep"

    @ray.remote
    def outer():
        return inner.remote()

    inner_ref = ray.get(outer.remote(), timeout=GET_TIMEOUT)
    assert isinstance(inner_ref, ray.ObjectRef)
    assert ray.get(inner_ref, timeout=GET_TIMEOUT) == "deep"


def test_put_inside_task_and_return_ref(cluster):
    ray = cluster

    @ray.remote
    def putter():
        return [ray.put({"made": "in task"})]

    [ref] = ray.get(putter.remote(), timeout=GET_TIMEOUT)
    assert ray.get(ref, timeout=GET_TIMEOUT) == {"made": "in task"}


def test_large_argument_by_value(cluster):
    ray = cluster
    blob = os.urandom(3 * 1024 * 1024)

    @ray.remote
    def digest(b):
        import hashlib

        return len(b), hashlib.sha256(b).hexdigest()

    assert ray.get(digest.remote(blob), timeout=GET_TIMEOUT) == (len(blob), hashlib.sha256(blob).hexdigest())


def test_numpy_values_small_and_large(cluster):
    ray = cluster

    @ray.remote
    def make(n):
        import numpy as np

        return np.arange(n, dtype=np.float64)

    small = ray.get(make.remote(10), timeout=GET_TIMEOUT)
    assert isinstance(small, np.ndarray)
    assert small.tolist() == list(range(10))

    big = ray.get(make.remote(400_000), timeout=GET_TIMEOUT)  # 3.2 MB
    assert big.shape == (400_000,) and big.dtype == np.float64
    assert big[0] == 0 and big[-1] == 399_999
    assert big.flags.writeable is False  # zero-copy from the object store, like Ray


# ----------------------------------------------------------------------------------- nested tasks


def test_nested_tasks_do_not_deadlock_when_all_cpus_busy(cluster):
    ray = cluster

    @ray.remote
    def child(i):
        import time

        time.sleep(0.1)
        return i

    @ray.remote
    def parent(i):
        return sum(ray.get([child.remote(i * 10 + j) for j in range(3)]))

    # 4 parents on 2 CPUs: parents blocked in get() must give their CPU back to the children.
    refs = [parent.remote(i) for i in range(4)]
    assert ray.get(refs, timeout=GET_TIMEOUT) == [sum(i * 10 + j for j in range(3)) for i in range(4)]


def test_recursive_remote_function(cluster):
    ray = cluster

    @ray.remote
    def fact(n):
        if n <= 1:
            return 1
        return n * ray.get(fact.remote(n - 1))

    assert ray.get(fact.remote(5), timeout=GET_TIMEOUT) == 120


def test_nested_wait_inside_task(cluster):
    ray = cluster

    @ray.remote
    def leaf(i):
        return i

    @ray.remote
    def waiter():
        refs = [leaf.remote(i) for i in range(4)]
        ready, rest = ray.wait(refs, num_returns=4, timeout=30)
        return len(ready), len(rest), sorted(ray.get(ready))

    assert ray.get(waiter.remote(), timeout=GET_TIMEOUT) == (4, 0, [0, 1, 2, 3])


def test_tasks_run_in_parallel_on_two_cpus(cluster, tmp_path):
    """Each task announces itself and waits for the other: only tasks that run at the same time
    can both see each other (run one after the other, the first gives up and says so)."""
    ray = cluster

    @ray.remote
    def meet(me: str, other: str, where: str) -> bool:
        import os
        import time

        open(os.path.join(where, me), "w").close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(os.path.join(where, other)):
                return True
            time.sleep(0.01)
        return False

    assert ray.get([meet.remote("a", "b", str(tmp_path)), meet.remote("b", "a", str(tmp_path))],
                   timeout=GET_TIMEOUT) == [True, True]
