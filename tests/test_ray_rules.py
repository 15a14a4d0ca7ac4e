"""Ray 2.x rules that ported programs rely on (issue 13), written from Ray's documentation and run
against starburst: generators, exiting, cancel of async actor calls, exceptions by value, small
get/wait rules, errors a person can act on. Module paths and the end of a script run in fresh
interpreters (``run_script``); the rest share the module's 2-CPU cluster."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

import starburst
from starburst.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    RaySystemError,
    TaskCancelledError,
    WorkerCrashedError,
)


@starburst.remote
class Signal:
    """Tests wait on this instead of sleeping: ``wait`` blocks until ``send`` was called."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def send(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


# ------------------------------------------------------------------------------------ generators


@starburst.remote
def count_to(n):
    for i in range(n):
        yield i


def test_a_function_that_yields_streams_by_default(cluster):
    gen = count_to.remote(3)
    assert isinstance(gen, starburst.ObjectRefGenerator)
    assert [cluster.get(ref) for ref in gen] == [0, 1, 2]
    gen = count_to.remote(2)
    assert cluster.get(next(gen)) == 0 and cluster.get(next(gen)) == 1
    with pytest.raises(StopIteration):
        next(gen)


@starburst.remote
class Streamer:
    def numbers(self, n):
        for i in range(n):
            yield i * 10

    async def pid(self):
        return os.getpid()


@starburst.remote
class AsyncStreamer:
    async def numbers(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i + 100


def test_generator_and_async_generator_methods_stream(cluster):
    assert [cluster.get(r) for r in Streamer.remote().numbers.remote(3)] == [0, 10, 20]
    gen = AsyncStreamer.remote().numbers.remote(3)
    assert isinstance(gen, starburst.ObjectRefGenerator)

    async def consume():
        return [await ref async for ref in gen]

    assert asyncio.run(consume()) == [100, 101, 102]


@starburst.remote
def gated(signal):
    starburst.get(signal.wait.remote())
    yield "first"


def test_wait_takes_a_generator_ready_when_its_next_item_is(cluster):
    signal = Signal.remote()
    gen = gated.remote(signal)
    assert cluster.wait([gen], timeout=0.2) == ([], [gen])
    signal.send.remote()
    ready, not_ready = cluster.wait([gen], num_returns=1, timeout=60)
    assert ready == [gen] and not_ready == []
    assert cluster.get(next(gen)) == "first"


@starburst.remote
def one_then_block(signal):
    yield "before"
    starburst.get(signal.wait.remote())
    yield "after"


def test_next_sync_returns_the_next_ref_or_a_nil_one_on_timeout(cluster):
    """Ray's non-blocking form: ``ref = gen._next_sync(timeout_s=...)``, then ``ref.is_nil()``."""
    signal = Signal.remote()
    gen = one_then_block.remote(signal)
    first = gen._next_sync(timeout_s=60)
    assert not first.is_nil() and cluster.get(first) == "before"
    assert gen._next_sync(timeout_s=0.2).is_nil()  # the second waits for the signal
    signal.send.remote()
    second = gen._next_sync(timeout_s=60)
    assert not second.is_nil() and cluster.get(second) == "after"


def test_cancel_takes_a_generator(cluster):
    never = Signal.remote()
    gen = one_then_block.remote(never)
    assert cluster.get(next(gen)) == "before"  # it is running
    cluster.cancel(gen)
    with pytest.raises(TaskCancelledError):
        cluster.get(next(gen), timeout=60)


@starburst.remote(num_returns=3)
def two_then_raise():
    yield "a"
    yield "b"
    raise KeyError("third")


@starburst.remote(num_returns=3)
def yields_too_few():
    yield 1


@starburst.remote(num_returns=2)
def yields_too_many():
    yield from (1, 2, 3)


def test_fixed_num_returns_generator_error_fills_the_remaining_refs(cluster):
    first, second, third = two_then_raise.remote()
    assert cluster.get([first, second]) == ["a", "b"]
    with pytest.raises(KeyError):  # the generator's own error, not a crashed worker
        cluster.get(third)
    refs = yields_too_few.remote()
    assert cluster.get(refs[0]) == 1
    for ref in refs[1:]:
        with pytest.raises(ValueError, match="num_returns=3"):
            cluster.get(ref)
    assert cluster.get(yields_too_many.remote()) == [1, 2]  # Ray keeps the first N and logs the rest


def test_get_of_a_generator_returns_it_as_in_ray(cluster):
    gen = count_to.remote(1)
    assert cluster.get(gen) is gen and cluster.get(next(gen)) == 0


@starburst.remote(num_returns="dynamic")
def dynamic_then_raise():
    yield 1
    yield 2
    raise LookupError("dynamic")


def test_dynamic_generator_error_is_in_its_last_ref(cluster):
    refs = list(cluster.get(dynamic_then_raise.remote()))
    assert len(refs) == 3
    assert cluster.get(refs[:2]) == [1, 2]
    with pytest.raises(LookupError):
        cluster.get(refs[2])


# ------------------------------------------------------------------------------------ exiting


@starburst.remote(max_restarts=1)
class Exiter:
    def pid(self):
        return os.getpid()

    def leave(self):
        sys.exit(1)

    def exit_actor(self):
        starburst.actor.exit_actor()


def test_sys_exit_in_an_actor_is_a_crash_and_max_restarts_applies(cluster):
    actor = Exiter.remote()
    first = cluster.get(actor.pid.remote())
    with pytest.raises(ActorUnavailableError, match="restarting"):  # Ray's type: it will come back
        cluster.get(actor.leave.remote())
    second = cluster.get(actor.pid.remote())  # restarted once (max_restarts=1)
    assert second != first
    with pytest.raises(RayActorError):
        cluster.get(actor.leave.remote())
    with pytest.raises(ActorDiedError):  # no restarts left
        cluster.get(actor.pid.remote())


def test_exit_actor_ends_it_for_good(cluster):
    actor = Exiter.remote()
    cluster.get(actor.pid.remote())
    with pytest.raises(ActorDiedError, match="exit_actor"):
        cluster.get(actor.exit_actor.remote())
    with pytest.raises(ActorDiedError, match=r"it called exit_actor\(\)"):  # an intended exit: not
        cluster.get(actor.pid.remote(), timeout=60)                             # restarted (max_restarts=1)


@starburst.remote(max_restarts=2)
class LeavesAtOnce:
    def __init__(self, path):
        with open(path, "a") as f:
            f.write("x")
        starburst.actor.exit_actor()

    def ping(self):
        return "pong"


def test_exit_actor_in_the_constructor_ends_it_without_restarts(cluster, tmp_path):
    path = tmp_path / "constructed"
    with pytest.raises(ActorDiedError, match=r"it called exit_actor\(\)"):
        cluster.get(LeavesAtOnce.remote(str(path)).ping.remote(), timeout=60)
    assert path.read_text() == "x"  # Ray 2.60 too: constructed once, not restarted


def test_exit_actor_outside_an_actor_is_a_type_error():
    with pytest.raises(TypeError, match="inside an actor"):
        starburst.actor.exit_actor()


@starburst.remote
def exits_each_time(path):
    with open(path, "a") as f:
        f.write("x")
    sys.exit(3)


def test_sys_exit_in_a_task_is_a_worker_exit_retried_per_max_retries(cluster, tmp_path):
    path = tmp_path / "attempts"
    with pytest.raises(WorkerCrashedError, match="exit code 3"):
        cluster.get(exits_each_time.options(max_retries=2).remote(str(path)))
    assert path.read_text() == "xxx"  # the first run and 2 retries


# ------------------------------------------------------------------------------------ cancel


@starburst.remote
class AsyncWorker:
    def __init__(self):
        self.cancelled = 0

    async def block(self, started, signal):
        try:  # the cancel may come while the reply to send() is still on its way here
            await started.send.remote()
            await signal.wait.remote()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def cancelled_count(self):
        return self.cancelled


def test_cancel_of_a_running_async_actor_call_raises_task_cancelled(cluster):
    worker, started, never = AsyncWorker.remote(), Signal.remote(), Signal.remote()
    ref = worker.block.remote(started, never)
    cluster.get(started.wait.remote(), timeout=60)  # the call is running (and blocked)
    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert cluster.get(worker.cancelled_count.remote()) == 1  # its asyncio task saw the cancel


@starburst.remote
class SyncWorker:
    def __init__(self):
        self.saw_cancel = False

    def work_until_cancelled(self, started):
        starburst.get(started.send.remote())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Ray's documented pattern for sync actors
            if starburst.get_runtime_context().is_canceled():
                self.saw_cancel = True
                return "stopped"
            time.sleep(0.01)
        return "never cancelled"

    def saw(self):
        return self.saw_cancel


@pytest.mark.parametrize("concurrency", [1, 2], ids=["sync", "threaded"])
def test_cancel_of_a_running_sync_actor_call_sets_a_flag_and_does_not_interrupt(cluster, concurrency):
    worker, started = SyncWorker.options(max_concurrency=concurrency).remote(), Signal.remote()
    ref = worker.work_until_cancelled.remote(started)
    cluster.get(started.wait.remote(), timeout=60)
    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):  # what Ray 2.60 answers once the call has returned
        cluster.get(ref, timeout=60)
    assert cluster.get(worker.saw.remote(), timeout=60) is True  # it ran on and saw the flag


# ------------------------------------------------------------------------------------ exceptions by value


class Unloadable:
    """Pickles fine in the driver, fails to unpickle in the worker."""

    def __reduce__(self):
        return (_fail_to_load, ())


def _fail_to_load():
    raise ImportError("no module named 'a_library_the_worker_lacks'")


@starburst.remote
def identity(x):
    return x


def test_an_argument_that_fails_to_unpickle_is_a_clear_task_error(cluster):
    with pytest.raises(RaySystemError, match="could not deserialize the arguments of identity.*"
                                             "a_library_the_worker_lacks"):
        cluster.get(identity.options(max_retries=0).remote(Unloadable()))
    assert cluster.get(identity.remote(5)) == 5


@pytest.mark.slow
def test_retry_exceptions_with_a_class_defined_in_the_script(run_script, tmp_path):
    path = str(tmp_path / "attempts")
    proc = run_script(f"""
        import os
        import starburst as ray

        class Flaky(Exception):
            pass

        @ray.remote(max_retries=3, retry_exceptions=[Flaky])
        def flaky(path):
            with open(path, "a") as f:
                f.write(f"{{os.getpid()}} ")
            if len(open(path).read().split()) < 3:
                raise Flaky("again")
            return "done"

        ray.init(num_cpus=1)
        print(ray.get(flaky.remote({path!r})))
        ray.shutdown()
    """)
    assert proc.stdout.split() == ["done"], proc.stdout + proc.stderr
    pids = (tmp_path / "attempts").read_text().split()
    # Retried as an application error by the same worker: it never died unpickling the class.
    assert len(pids) == 3 and len(set(pids)) == 1, pids


# ------------------------------------------------------------------------------------ small rules


def test_get_of_a_tuple_raises_like_ray(cluster):
    ref = identity.remote(1)
    with pytest.raises(ValueError, match="must either be an ObjectRef or a list"):
        cluster.get((ref,))
    assert cluster.get([ref]) == [1] and cluster.get(ref) == 1


def test_wait_keeps_order_and_returns_what_finished_within_its_timeout(cluster):
    gate = Signal.remote()

    @starburst.remote
    def held(signal):
        starburst.get(signal.wait.remote())
        return "slow"

    refs = [identity.remote("a"), held.remote(gate), identity.remote("c")]
    # Returns as soon as two are ready (a bound, not a wait: a loaded machine may take longer).
    ready, not_ready = cluster.wait(refs, num_returns=2, timeout=60)
    assert ready == [refs[0], refs[2]] and not_ready == [refs[1]]
    started = time.monotonic()  # the timeout is kept: three can't be ready, so it waits it out
    ready, not_ready = cluster.wait(refs, num_returns=3, timeout=0.3)
    assert time.monotonic() - started >= 0.3 and ready == [refs[0], refs[2]]
    gate.send.remote()
    assert cluster.get(refs) == ["a", "slow", "c"]


# ------------------------------------------------------------------------------------ errors to act on


@starburst.remote(max_retries=0)
def aborts():
    os.abort()


def test_worker_crashed_error_carries_the_workers_last_stderr_lines(cluster):
    with pytest.raises(WorkerCrashedError) as info:
        cluster.get(aborts.remote())
    text = str(info.value)
    assert "SIGABRT" in text and "Fatal Python error: Aborted" in text
    assert f'File "{__file__}"' in text and "in aborts" in text


@starburst.remote(max_retries=0)
def interrupts_itself():
    raise KeyboardInterrupt("not a cancel")  # a BaseException the worker does not turn into a task error


def test_worker_crashed_error_carries_an_uncaught_exceptions_traceback(cluster):
    with pytest.raises(WorkerCrashedError) as info:
        cluster.get(interrupts_itself.remote())
    text = str(info.value)
    assert "KeyboardInterrupt: not a cancel" in text and "in interrupts_itself" in text, text


@starburst.remote
class Raiser:
    def method(self):
        raise ValueError("from a method")


def test_actor_method_tracebacks_show_the_users_file_and_line(cluster):
    with pytest.raises(ValueError) as info:
        cluster.get(Raiser.remote().method.remote())
    line = Raiser._cls.method.__code__.co_firstlineno + 1
    assert f'File "{__file__}", line {line}, in method' in str(info.value)


# ------------------------------------------------------------------------------------ fresh interpreters


@pytest.mark.slow
def test_ray_module_paths_resolve_and_gaps_say_what_is_missing(run_script):
    proc = run_script("""
        from starburst.compat import install_ray_alias
        install_ray_alias()
        import ray
        # Reachable as attributes after a plain `import ray`, as in Ray.
        assert ray.util.ActorPool and ray.util.as_completed and ray.dag.InputNode
        from ray.dag.input_node import InputNode, InputAttributeNode, DAGInputData
        from ray.dag.output_node import MultiOutputNode
        from ray.dag.function_node import FunctionNode
        from ray.dag.class_node import ClassNode, ClassMethodNode
        from ray.dag.dag_node import DAGNode
        from ray._raylet import ObjectRef, ObjectRefGenerator
        from ray.actor import ActorHandle, ActorClass, exit_actor
        from ray.remote_function import RemoteFunction
        from ray.exceptions import AsyncioActorExit
        assert ObjectRefGenerator is ray.ObjectRefGenerator and ObjectRef is ray.ObjectRef
        assert InputNode is ray.dag.InputNode and MultiOutputNode is ray.dag.MultiOutputNode
        ray.init(num_cpus=1)
        assert ray.get_gpu_ids() == [] and ray.util.get_node_ip_address() == "127.0.0.1"
        assert ray.util.inspect_serializability(ray.init)[0] is True
        try:
            ray.util.placement_group
        except AttributeError as exc:
            assert "starburst does not support placement groups" in str(exc), exc
        else:
            raise AssertionError("ray.util.placement_group should say it is not supported")
        assert ray.get_runtime_context().get_accelerator_ids() == {"GPU": []}
        ray.shutdown()
        for name in ("ray.data", "ray.serve"):
            try:
                __import__(name)
            except ModuleNotFoundError as exc:
                print(exc)
    """, env={"CUDA_VISIBLE_DEVICES": ""})
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert "No module named 'ray.data': starburst does not support Ray Data (ray.data)" in lines[0]
    assert "No module named 'ray.serve': starburst does not support Ray Serve (ray.serve)" in lines[1]


@pytest.mark.slow
def test_the_ray_rules_script_runs_unchanged_through_starburst_run(tmp_path):
    """tests/ray_programs/ray_rules.py is a plain Ray script; benchmarks/check_ray_rules.sh runs the
    same file under real Ray."""
    import subprocess

    from conftest import ROOT

    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STARBURST_RAY_ALIAS", None)
    proc = subprocess.run([sys.executable, "-m", "starburst.compat", "run",
                           str(ROOT / "tests" / "ray_programs" / "ray_rules.py")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ALL RULES HOLD"), proc.stdout + proc.stderr


@pytest.mark.slow
def test_fire_and_forget_task_finishes_and_prints_at_script_end(run_script):
    proc = run_script("""
        import atexit, os, tempfile, time
        import starburst as ray

        ended = os.path.join(tempfile.mkdtemp(), "script-ended")
        # Registered after starburst's own exit hooks, so it runs before them: the script has
        # ended (and the task is still held back) when the flag appears.
        atexit.register(lambda: open(ended, "w").close())

        @ray.remote
        def report(flag):
            deadline = time.monotonic() + 60
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.01)  # work that outlives the script's last line
            print("the task ran", "after the script ended" if os.path.exists(flag) else "(no end seen)")

        ray.init(num_cpus=1)
        report.remote(ended)
    """)
    assert "the task ran after the script ended" in proc.stdout, proc.stdout + proc.stderr
