"""Object lifetime and the object path: what lives in the object store, for how long, and how values
get there and back.

Large values (serialized size >= the inline threshold, 1 MiB) are files in the cluster's store
directory (``/dev/shm/starburst-<cluster>/``); these tests watch those files and the head's object
count (``python -m starburst status --json``) rather than trusting the API alone. Releases reach the
head asynchronously, so "is deleted" always means "is deleted within a few seconds".

Slow tasks wait on a gate file that the test creates, and give up by themselves after a while, so a
failing test never leaves a CPU busy for long.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import starburst._runtime
from starburst.serialization import serialize
from conftest import head_caught_up, wait_for

GET_TIMEOUT = 30
MiB = 1 << 20


# ------------------------------------------------------------------------------------------ helpers


def _status() -> dict:
    """The fixture's head as the CLI sees it (STARBURST_HOME is the test session's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "starburst", "status", "--json"], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"starburst status failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def store(cluster) -> pathlib.Path:
    """The store directory of the module's cluster (from `starburst status`, cross-checked)."""
    url = _status()["store"]
    assert url.startswith("file://"), url
    path = pathlib.Path(url[len("file://"):])
    assert path.is_dir()
    assert pathlib.Path(starburst._runtime.peek_client().store.directory) == path
    return path


def _object_files(store: pathlib.Path) -> set[str]:
    """Names of the stored objects (the node keeps its socket directory in there too)."""
    names = set()
    for entry in os.scandir(store):
        try:
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):  # "." : being written
                names.add(entry.name)
        except FileNotFoundError:
            pass
    return names


def _release(*_names) -> None:
    """Callers `del` their refs first; this makes sure cycles are gone too."""
    gc.collect()


def _big(seed: int = 0, n: int = 300_000) -> np.ndarray:  # 2.4 MB of float64: stored, not inline
    return np.random.default_rng(seed).random(n)


def _gated(ray):
    @ray.remote
    def gated(gate, value=None, limit=20.0, started=None):
        import os
        import time

        if started:
            open(started, "w").close()
        deadline = time.time() + limit
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        return value

    return gated


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """Address ranges of this process that map `path` (also once it has been unlinked)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().removesuffix(" (deleted)") == path:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


# ------------------------------------------------------------------------------ put / get lifetime


def test_large_put_file_lives_with_ref_and_is_deleted_after_release(cluster, store):
    ray = cluster
    arr = _big(1)
    ref = ray.put(arr)
    name = ref.hex()
    assert name in _object_files(store), "a large put must be written to the store"
    head_caught_up(ray)
    assert name in _object_files(store), "the stored value vanished while its ref is alive"
    got = ray.get(ref, timeout=GET_TIMEOUT)
    assert np.array_equal(got, arr)
    del got, ref
    _release()
    wait_for(lambda: name not in _object_files(store), 30, "the stored value outlived its last ref")


def test_small_put_is_not_stored_as_a_file(cluster, store):
    ray = cluster
    before = _object_files(store)
    ref = ray.put(np.zeros(1000))
    assert ray.get(ref, timeout=GET_TIMEOUT).sum() == 0
    assert ref.hex() not in _object_files(store)
    assert not (_object_files(store) - before)


def test_large_task_result_file_lives_with_ref_and_is_deleted_after_release(cluster, store):
    ray = cluster

    @ray.remote
    def make(seed):
        import numpy as np

        return np.random.default_rng(seed).random(300_000)

    ref = make.remote(2)
    got = ray.get(ref, timeout=GET_TIMEOUT)
    assert np.array_equal(got, _big(2))
    name = ref.hex()
    assert name in _object_files(store), "a large task result must live in the store"
    head_caught_up(ray)
    assert name in _object_files(store)
    assert np.array_equal(ray.get(ref, timeout=GET_TIMEOUT), _big(2))
    del got, ref
    _release()
    wait_for(lambda: name not in _object_files(store), 30, "the store to let go of it")


@pytest.mark.slow
def test_large_result_of_task_whose_ref_was_dropped_early_is_deleted(cluster, store, tmp_path):
    ray = cluster

    @ray.remote
    def make_later(gate):
        import os
        import time

        import numpy as np

        deadline = time.time() + 20
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        return np.ones(400_000)

    @ray.remote
    def marker():
        return "ran"

    gate = tmp_path / "gate"
    ref = make_later.remote(str(gate))
    name = ref.hex()
    del ref
    _release()
    # The release reaches the head while the task still runs: the head answers this later call
    # only after the batch that carried the release (a session's ops are applied in order).
    assert ray.get(marker.remote(), timeout=GET_TIMEOUT) == "ran"
    gate.write_text("go")
    # Nothing to get: wait until the task has finished, then its result must not stay behind.
    wait_for(lambda: _status()["tasks_running"] == 0 and _status()["queued"] == 0, 30, "the store to let go of it")
    assert ray.get(marker.remote(), timeout=GET_TIMEOUT) == "ran"
    wait_for(lambda: name not in _object_files(store), 30, "result nobody holds was left in the store")


def test_large_argument_by_value_is_deleted_after_the_task(cluster, store, tmp_path):
    ray = cluster

    @ray.remote
    def total(gate, a, started):
        import os
        import time

        open(started, "w").close()  # its arguments are loaded
        deadline = time.time() + 20
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        return float(a.sum())

    arr = _big(3)
    gate = tmp_path / "gate"
    before = _object_files(store)
    started = tmp_path / "started"
    ref = total.remote(str(gate), arr, str(started))  # by value: the arguments themselves go to the store
    new = _object_files(store) - before
    assert len(new) == 1, f"expected the arguments as one stored object, found {new}"
    wait_for(started.exists, 30, "the task to start")
    head_caught_up(ray)  # (the cluster's second CPU runs it)
    assert new <= _object_files(store), "the arguments vanished while the task still needed them"
    gate.write_text("go")
    assert ray.get(ref, timeout=GET_TIMEOUT) == pytest.approx(float(arr.sum()))
    del ref
    _release()
    wait_for(lambda: not (new & _object_files(store)), 30, "arguments stayed in the store after the task")


def test_cancelled_pending_task_large_argument_is_deleted(cluster, store, tmp_path):
    ray = cluster
    gated = _gated(ray)
    gate = tmp_path / "gate"

    @ray.remote
    def total(a):
        return float(a.sum())

    started = [tmp_path / f"started-{i}" for i in range(2)]
    blockers = [gated.remote(str(gate), started=str(path)) for path in started]  # both CPUs busy
    try:
        wait_for(lambda: all(path.exists() for path in started), 30, "the blockers to start")
        before = _object_files(store)
        ref = total.remote(_big(4))
        new = _object_files(store) - before
        assert len(new) == 1
        ray.cancel(ref)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(ref, timeout=GET_TIMEOUT)
        wait_for(lambda: not (new & _object_files(store)), 30, "a cancelled task's arguments stayed")
    finally:
        gate.write_text("go")
        ray.get(blockers, timeout=GET_TIMEOUT)


@pytest.mark.parametrize("how", ["exception", "worker_dies"])
def test_retried_task_still_has_its_large_arguments(cluster, store, tmp_path, how):
    ray = cluster
    marker = tmp_path / "first-attempt-done"

    @ray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path, how, a, dep):
        import os

        if not os.path.exists(path):
            open(path, "w").close()
            if how == "exception":
                raise RuntimeError("first attempt fails")
            os._exit(1)
        return float(a.sum()) + float(dep.sum())

    arr, dep_arr = _big(5), _big(6)
    dep = ray.put(dep_arr)
    dep_name = dep.hex()
    before = _object_files(store)
    ref = flaky.remote(str(marker), how, arr, dep)
    new = _object_files(store) - before
    del dep  # only the task keeps the dependency alive now
    _release()
    assert ray.get(ref, timeout=GET_TIMEOUT) == pytest.approx(float(arr.sum()) + float(dep_arr.sum()))
    assert marker.exists()
    del ref
    _release()
    wait_for(lambda: not ((new | {dep_name}) & _object_files(store)), 30, "the store to let go of it")


# ------------------------------------------------------------------------------ refs inside values


@pytest.mark.slow
@pytest.mark.parametrize("container", ["inline", "stored"])
def test_object_referenced_only_from_a_live_container_stays_retrievable(cluster, store, container):
    ray = cluster
    arr = _big(7)
    ref_x = ray.put(arr)
    x_name = ref_x.hex()
    outer = ray.put([ref_x, "tag"] if container == "inline" else [ref_x, "tag", np.ones(200_000)])
    assert (outer.hex() in _object_files(store)) == (container == "stored")
    del ref_x
    _release()
    head_caught_up(ray)  # the driver's release of x has reached the head
    assert x_name in _object_files(store), "x was freed although the container holding its ref is alive"
    inner_list = ray.get(outer, timeout=GET_TIMEOUT)
    assert inner_list[1] == "tag"
    inner = inner_list[0]
    assert inner.hex() == x_name
    assert np.array_equal(ray.get(inner, timeout=GET_TIMEOUT), arr)
    # Dropping the container first: the deserialized inner ref still keeps x.
    del outer, inner_list
    _release()
    head_caught_up(ray)
    assert np.array_equal(ray.get(inner, timeout=GET_TIMEOUT), arr)
    del inner
    _release()
    wait_for(lambda: x_name not in _object_files(store), 30, "x outlived the container and every ref")


def test_container_passed_to_task_keeps_inner_object_alive(cluster, store, tmp_path):
    ray = cluster

    @ray.remote
    def inner_sum(box, gate):
        import os
        import time

        import starburst

        deadline = time.time() + 30
        while not os.path.exists(gate) and time.time() < deadline:  # the driver has dropped its refs
            time.sleep(0.01)
        return float(starburst.get(box["x"]).sum())

    arr = _big(8)
    ref_x = ray.put(arr)
    x_name = ref_x.hex()
    box = ray.put({"x": ref_x})
    gate = tmp_path / "released"
    out = inner_sum.remote(box, str(gate))  # the container is a dependency; x only travels inside it
    del ref_x, box
    _release()
    head_caught_up(ray)
    gate.touch()
    assert ray.get(out, timeout=GET_TIMEOUT) == pytest.approx(float(arr.sum()))
    del out
    _release()
    wait_for(lambda: x_name not in _object_files(store), 30, "the store to let go of it")


@pytest.mark.parametrize("shape", ["list", "bare_ref"])
def test_ref_put_inside_a_task_stays_valid_after_the_task_ends(cluster, store, shape):
    ray = cluster

    @ray.remote
    def producer(seed, shape):
        import numpy as np

        import starburst

        r = starburst.put(np.random.default_rng(seed).random(300_000))
        return [r] if shape == "list" else r

    @ray.remote
    def churn(i):
        return i

    result = ray.get(producer.remote(9, shape), timeout=GET_TIMEOUT)
    inner = result[0] if shape == "list" else result
    assert isinstance(inner, ray.ObjectRef)
    name = inner.hex()
    # The producing task is over; its executor moves on to other work.
    assert ray.get([churn.remote(i) for i in range(20)], timeout=GET_TIMEOUT) == list(range(20))
    head_caught_up(ray)
    assert name in _object_files(store), "the task's put was freed although the driver holds its ref"
    assert np.array_equal(ray.get(inner, timeout=GET_TIMEOUT), _big(9))
    del result, inner
    _release()
    wait_for(lambda: name not in _object_files(store), 30, "the store to let go of it")


@pytest.mark.parametrize("how", ["top_level", "nested"])
def test_ref_dropped_by_driver_right_after_remote_still_resolves_in_task(cluster, store, how, tmp_path):
    ray = cluster

    @ray.remote
    def use(x, how, gate):
        import os
        import time

        import starburst

        if how == "nested":
            deadline = time.time() + 30
            while not os.path.exists(gate) and time.time() < deadline:  # the driver's release has arrived
                time.sleep(0.01)
            x = starburst.get(x[0])
        return float(x.sum())

    arr = _big(10)
    ref = ray.put(arr)
    name = ref.hex()
    gate = tmp_path / "released"
    out = use.remote(ref if how == "top_level" else [ref], how, str(gate))
    del ref
    _release()
    head_caught_up(ray)
    gate.touch()
    assert ray.get(out, timeout=GET_TIMEOUT) == pytest.approx(float(arr.sum()))
    del out
    _release()
    wait_for(lambda: name not in _object_files(store), 30, "the store to let go of it")


# ------------------------------------------------------------------------------------- zero copy


def test_get_of_large_array_is_a_read_only_view_of_the_stored_file(cluster, store):
    ray = cluster
    arr = _big(11)
    ref = ray.put(arr)
    got = ray.get(ref, timeout=GET_TIMEOUT)
    assert np.array_equal(got, arr)
    assert not got.flags.writeable
    with pytest.raises(ValueError):
        got[0] = 1.0
    address = got.__array_interface__["data"][0]
    ranges = _mapped_ranges(str(store / ref.hex()))
    assert any(lo <= address < hi for lo, hi in ranges), "get() copied the array instead of mapping the store"
    del got, ref
    _release()


def test_two_gets_of_the_same_large_array_share_memory(cluster, store):
    ray = cluster
    ref = ray.put(_big(12))
    a = ray.get(ref, timeout=GET_TIMEOUT)
    b = ray.get(ref, timeout=GET_TIMEOUT)
    read_only = not a.flags.writeable and not b.flags.writeable
    equal = np.array_equal(a, b)
    shared = np.shares_memory(a, b)
    del a, b, ref  # before asserting: a failure must not keep the object alive for the later tests
    _release()
    assert read_only and equal
    assert shared, "two gets of one object gave two separate mappings (Ray shares one buffer)"


def test_held_refs_to_large_objects_do_not_each_keep_a_file_descriptor(cluster, store):
    """Getting a large object once and dropping the array must not pin a descriptor for as long as
    the ref lives: with the usual limit of 1024 (256 on macOS) a driver holding many refs would
    run out of descriptors."""
    ray = cluster

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    refs = [ray.put(np.full(140_000, i, dtype=np.float64)) for i in range(150)]  # 1.1 MB each
    base = open_fds()
    for i, r in enumerate(refs):
        a = ray.get(r, timeout=GET_TIMEOUT)
        assert a[0] == i
        del a
    gc.collect()
    held, n = open_fds() - base, len(refs)
    del refs  # before asserting: a failure must not keep the objects alive for the later tests
    _release()
    assert held < 20, f"{held} descriptors held for {n} refs nobody reads"


def test_large_array_through_a_chain_of_tasks(cluster, store):
    ray = cluster

    @ray.remote
    def add_one(a):
        return a + 1

    arr = _big(13)
    ref = ray.put(arr)
    names = [ref.hex()]
    for _ in range(5):
        ref = add_one.remote(ref)  # the driver drops each intermediate ref at once
        names.append(ref.hex())
    out = ray.get(ref, timeout=GET_TIMEOUT)
    assert np.allclose(out, arr + 5)
    assert names[-1] in _object_files(store)
    wait_for(lambda: not (set(names[:-1]) & _object_files(store)), 30, "intermediate values stayed")
    del out, ref
    _release()
    wait_for(lambda: not (set(names) & _object_files(store)), 30, "the store to let go of it")


# -------------------------------------------------------------------------- the inline threshold


def _sizes_around_threshold(threshold: int) -> tuple[int, int]:
    """Array lengths whose serialized size is just under and just at/over the threshold."""
    lo, hi = threshold - 16_384, threshold
    while lo < hi:  # smallest n whose serialized size reaches the threshold
        mid = (lo + hi) // 2
        if serialize(np.zeros(mid, np.uint8)).size >= threshold:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1, lo


@pytest.mark.slow
def test_many_objects_just_under_and_over_the_inline_threshold_round_trip(cluster, store):
    ray = cluster
    threshold = starburst._runtime.peek_client().inline_threshold
    assert threshold == MiB
    n_under, n_over = _sizes_around_threshold(threshold)
    assert serialize(np.zeros(n_under, np.uint8)).size < threshold <= serialize(np.zeros(n_over, np.uint8)).size

    @ray.remote
    def echo(a):
        return a

    def value(i):
        a = np.full(n_under if i % 2 == 0 else n_over, i % 251, dtype=np.uint8)
        a[:4] = np.frombuffer(i.to_bytes(4, "little"), np.uint8)
        return a

    before = _object_files(store)
    refs = [ray.put(value(i)) for i in range(200)]
    files = _object_files(store) - before
    over = {r.hex() for i, r in enumerate(refs) if i % 2 == 1}
    under = {r.hex() for i, r in enumerate(refs) if i % 2 == 0}
    assert over <= files, "values at or over the threshold must be stored"
    assert not (under & files), "values under the threshold must travel inline"

    got = ray.get(refs, timeout=GET_TIMEOUT)
    for i, g in enumerate(got):
        assert np.array_equal(g, value(i)), f"object {i} came back wrong"
    del got
    echoed_refs = [echo.remote(r) for r in refs]
    echoed = ray.get(echoed_refs, timeout=GET_TIMEOUT)
    for i, g in enumerate(echoed):
        assert np.array_equal(g, value(i)), f"object {i} came back wrong through a task"
    del echoed
    echo_over = {r.hex() for i, r in enumerate(echoed_refs) if i % 2 == 1}
    echo_under = {r.hex() for i, r in enumerate(echoed_refs) if i % 2 == 0}
    files = _object_files(store)
    assert echo_over <= files and not (echo_under & files)

    del refs, echoed_refs
    _release()
    wait_for(lambda: not ((over | echo_over) & _object_files(store)), 30, "the store to let go of it")


# ------------------------------------------------------------------------------- object count


@pytest.mark.slow
def test_status_object_count_tracks_objects_and_returns_to_baseline(cluster, store):
    ray = cluster

    @ray.remote
    def small(i):
        return i

    wait_for(lambda: _status()["objects"] <= 2, 30, "the store to let go of it")
    baseline = _status()["objects"]
    puts = [ray.put(i) for i in range(30)]
    results = [small.remote(i) for i in range(30)]
    box = ray.put(puts[:5])
    assert ray.get(results, timeout=GET_TIMEOUT) == list(range(30))
    assert _status()["objects"] >= baseline + 61
    del puts, results, box
    _release()
    wait_for(lambda: _status()["objects"] <= baseline, 30, "the store to let go of it")


def test_everything_released_leaves_no_objects_and_no_files(cluster, store):
    """Runs after the others in this module: whatever they created must be gone by now."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):  # an earlier failure's frames
        if hasattr(sys, name):
            setattr(sys, name, None)
    _release()
    wait_for(lambda: _status()["objects"] == 0, 30, "no object left in the head's directory")
    wait_for(lambda: not _object_files(store), 30, "no file left in the store")


# --------------------------------------------------------------------- shutdown paths (own cluster)


_SCRIPT_PRELUDE = """
import json, os, signal, sys, subprocess
import numpy as np
import psutil
import starburst

starburst.init(num_cpus=2)

@starburst.remote
def make():
    import numpy as np
    return np.ones(400_000)

big_put = starburst.put(np.zeros(400_000))
big_result = make.remote()
starburst.get(big_result)
status = json.loads(subprocess.run([sys.executable, "-m", "starburst", "status", "--json"],
                                   capture_output=True, text=True, check=True).stdout)
node_pids = [n["pid"] for n in status["nodes"]]
executor_pids = [c.pid for p in node_pids for c in psutil.Process(p).children(recursive=True)]
store = status["store"][len("file://"):]
print(json.dumps({"store": store, "files": sorted(os.listdir(store)),
                  "pids": [status["pid"], *node_pids, *executor_pids]}), flush=True)
"""


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["shutdown", "exit_without_shutdown", "killed"])
def test_driver_ending_leaves_no_processes_and_no_store_files(run_script, ending):
    tail = {
        "shutdown": "starburst.shutdown()\n",
        "exit_without_shutdown": "sys.exit(0)\n",
        "killed": "os.kill(os.getpid(), signal.SIGKILL)\n",
    }[ending]
    proc = run_script(_SCRIPT_PRELUDE + tail, check=False)
    assert proc.returncode == (-signal.SIGKILL if ending == "killed" else 0), proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(info["pids"]) >= 4, info  # head, node, two executors
    assert len([f for f in info["files"] if not os.path.isdir(os.path.join(info["store"], f))]) >= 2
    # shutdown() waits for the head; otherwise the head notices the driver is gone and stops.
    timeout = 1.0 if ending == "shutdown" else 20.0
    wait_for(lambda: all(_gone(p) for p in info["pids"]), timeout, "every process of the cluster to exit")
    wait_for(lambda: not os.path.exists(info["store"]), timeout, f"the store directory {info['store']} to go")


# --------------------------------------------------------------- nested work owned by an executor


@pytest.mark.slow
def test_nested_task_ref_returned_by_a_task_survives_the_executor_being_retired(cluster):
    """A task returns the ref of a task it submitted. Executors started while others were blocked
    are retired when idle; the ref must keep working when the one that ran the task goes away."""
    ray = cluster

    @ray.remote(num_cpus=0.5)
    def sleeper(s):
        import time

        time.sleep(s)
        return 1

    @ray.remote(num_cpus=1)
    def blocker():
        import starburst

        return starburst.get(sleeper.remote(2.5))

    @ray.remote(num_cpus=0.5)
    def slow():
        import time

        time.sleep(1.0)
        return "ok"

    @ray.remote(num_cpus=0.5)
    def spawner():
        return [slow.remote()]

    for _ in range(3):  # the executor running spawner() is retired in most, not all, rounds
        blockers = [blocker.remote(), blocker.remote()]  # both block in get(): extra executors start
        time.sleep(1.0)
        outer = ray.get(spawner.remote(), timeout=GET_TIMEOUT)
        try:
            assert ray.get(outer[0], timeout=10) == "ok"
        finally:
            ray.get(blockers, timeout=GET_TIMEOUT)
