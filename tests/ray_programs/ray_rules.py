"""Ray 2.x rules a ported program relies on, as one plain Ray script (``import ray``).

The suite runs it through ``starburst run`` (tests/test_ray_rules.py); ``bash
benchmarks/check_ray_rules.sh`` runs the very same file under real Ray (benchmarks/.venv-ray), which
shows that the rules encode Ray's behaviour. Prints ``ok <rule>`` per rule, then ``ALL RULES HOLD``.
"""

import asyncio
import os
import sys
import tempfile
import threading
import time

import ray
from ray._raylet import ObjectRefGenerator
from ray.dag.input_node import InputNode
from ray.dag.output_node import MultiOutputNode


def check(name, condition):
    assert condition, name
    print("ok", name, flush=True)


def call_when_available(method):
    """Ray fails a call made while the actor restarts with ActorUnavailableError (max_task_retries=0);
    starburst queues it. Either way the restarted actor answers a later call."""
    for _ in range(600):
        try:
            return ray.get(method.remote())
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.05)
    raise AssertionError("the actor did not come back")


def raises(exc_type, fn):
    try:
        fn()
    except exc_type as exc:
        return exc
    raise AssertionError(f"expected {exc_type.__name__}")


@ray.remote
def count(n):
    for i in range(n):
        yield i


@ray.remote
def endless():
    i = 0
    while True:
        yield i
        i += 1
        time.sleep(0.01)


@ray.remote(num_returns=3)
def two_then_fail():
    yield "a"
    yield "b"
    raise KeyError("third")


@ray.remote(num_returns=2)
def one_too_many():
    yield from (1, 2, 3)


@ray.remote(num_returns="dynamic")
def dynamic_then_fail():
    yield 1
    raise LookupError("dynamic")


@ray.remote
class AsyncStream:
    def __init__(self):
        self.started = asyncio.Event()

    async def items(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def hang(self):
        self.started.set()
        await asyncio.sleep(3600)

    async def wait_started(self):
        await self.started.wait()

    async def retire(self):
        ray.actor.exit_actor()


@ray.remote(max_concurrency=2)
class Threaded:
    def __init__(self):
        self.started = threading.Event()

    def work(self):
        self.started.set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ray.get_runtime_context().is_canceled():
            time.sleep(0.01)
        return "returned"

    def wait_started(self):
        return self.started.wait(60)


@ray.remote(max_restarts=1)
class Exits:
    def pid(self):
        return os.getpid()

    def crash(self):
        sys.exit(1)

    def retire(self):
        ray.actor.exit_actor()


class Flaky(Exception):
    pass


@ray.remote(max_retries=3, retry_exceptions=[Flaky])
def flaky(path):
    with open(path, "a") as f:
        f.write("x")
    if len(open(path).read()) < 3:
        raise Flaky()
    return "done"


@ray.remote(max_retries=1)
def exits(path):
    with open(path, "a") as f:
        f.write("x")
    sys.exit(2)


@ray.remote
def double(x):
    return 2 * x


def main():
    ray.init(num_cpus=2)
    gen = count.remote(3)
    check("a function that yields returns an ObjectRefGenerator", isinstance(gen, ObjectRefGenerator))
    check("wait takes a generator", ray.wait([gen], num_returns=1, timeout=60)[0] == [gen])
    check("its items stream in order", [ray.get(r) for r in gen] == [0, 1, 2])

    gen = endless.remote()
    ray.get(next(gen))
    ray.cancel(gen)

    def drain():
        for ref in gen:
            ray.get(ref)

    raises(ray.exceptions.TaskCancelledError, drain)
    check("cancel of a generator: iterating on raises TaskCancelledError", True)

    a, b, c = two_then_fail.remote()
    check("num_returns=N keeps the values yielded before the error", ray.get([a, b]) == ["a", "b"])
    raises(KeyError, lambda: ray.get(c))
    check("num_returns=N: the rest raise the generator's error", True)

    check("num_returns=N: a surplus value is dropped, the N refs keep theirs",
          ray.get(one_too_many.remote()) == [1, 2])
    gen = count.remote(1)
    check("get of a generator returns it", ray.get(gen) is gen)

    refs = list(ray.get(dynamic_then_fail.remote()))
    check("dynamic: the yielded value is kept", ray.get(refs[0]) == 1)
    raises(LookupError, lambda: ray.get(refs[-1]))
    check("dynamic: the last ref raises the error", True)

    streamer = AsyncStream.remote()
    check("async generator methods stream", [ray.get(r) for r in streamer.items.remote(3)] == [0, 1, 2])

    raises(ValueError, lambda: ray.get((double.remote(1),)))
    check("get of a tuple raises ValueError", True)

    actor = Exits.remote()
    first = ray.get(actor.pid.remote())
    raises(ray.exceptions.ActorUnavailableError, lambda: ray.get(actor.crash.remote()))
    check("sys.exit in an actor: the call raises ActorUnavailableError, the actor restarts",
          call_when_available(actor.pid) != first)
    err = raises(ray.exceptions.RayActorError, lambda: ray.get(actor.retire.remote()))
    check("exit_actor: the call raises RayActorError", isinstance(err, ray.exceptions.RayActorError))
    raises(ray.exceptions.ActorDiedError, lambda: ray.get(actor.pid.remote()))
    check("exit_actor: not restarted, later calls raise ActorDiedError", True)

    ref = streamer.hang.remote()
    ray.get(streamer.wait_started.remote())  # it is running (an async actor runs both at once)
    ray.cancel(ref)
    raises(ray.exceptions.TaskCancelledError, lambda: ray.get(ref))
    check("cancel of a running async actor call raises TaskCancelledError", True)

    threaded = Threaded.remote()
    ref = threaded.work.remote()
    ray.get(threaded.wait_started.remote())
    ray.cancel(ref)
    raises(ray.exceptions.TaskCancelledError, lambda: ray.get(ref))
    check("cancel of a running threaded actor call: it sees is_canceled(), get raises TaskCancelledError", True)
    raises(ray.exceptions.ActorDiedError, lambda: ray.get(streamer.retire.remote()))
    check("exit_actor in an async actor: ActorDiedError", True)

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "flaky")
    check("retry_exceptions with a class defined in the script",
          ray.get(flaky.remote(path)) == "done" and open(path).read() == "xxx")
    path = os.path.join(folder, "exits")
    raises(ray.exceptions.WorkerCrashedError, lambda: ray.get(exits.remote(path)))
    check("sys.exit in a task is a worker crash retried per max_retries", open(path).read() == "xx")

    with InputNode() as inp:
        dag = MultiOutputNode([double.bind(inp), double.bind(double.bind(inp))])
    check("DAGs from ray.dag.input_node / output_node", ray.get(dag.execute(3)) == [6, 12])
    ray.shutdown()
    print("ALL RULES HOLD")


if __name__ == "__main__":
    main()
