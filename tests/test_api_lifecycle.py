"""Ray 2.x lifecycle semantics (init / shutdown / is_initialized / auto-init / re-init) and task
output forwarding to the driver. Every test runs its own driver script in a fresh interpreter via
the `run_script` fixture, since each needs its own init and shutdown."""

from __future__ import annotations

import re
import textwrap

import pytest

SCRIPT_TIMEOUT = 120


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(text: str) -> str:
    """Ray colours the "(f pid=...)" prefix with ANSI escapes; compare without them."""
    return _ANSI.sub("", text)


def _ok(proc, marker="SCRIPT-OK"):
    assert marker in proc.stdout, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_is_initialized_init_shutdown_cycle(run_script):
    proc = run_script(
        """
        import starburst as ray

        assert ray.is_initialized() is False
        ray.init(num_cpus=1)
        assert ray.is_initialized() is True

        @ray.remote
        def f(x):
            return x + 1

        assert ray.get(f.remote(1), timeout=60) == 2
        ray.shutdown()
        assert ray.is_initialized() is False
        ray.shutdown()  # a second shutdown is a no-op
        assert ray.is_initialized() is False
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_shutdown_without_init_is_a_no_op(run_script):
    proc = run_script(
        """
        import starburst as ray

        ray.shutdown()
        assert not ray.is_initialized()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_init_again_after_shutdown(run_script):
    proc = run_script(
        """
        import starburst as ray

        @ray.remote
        def f(x):
            return x * 2

        ray.init(num_cpus=1)
        assert ray.get(f.remote(1), timeout=60) == 2
        ray.shutdown()
        ray.init(num_cpus=2)
        assert ray.is_initialized()
        assert ray.get([f.remote(i) for i in range(4)], timeout=60) == [0, 2, 4, 6]
        r = ray.put("fresh")
        assert ray.get(r, timeout=60) == "fresh"
        ray.shutdown()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_auto_init_on_first_remote_call(run_script):
    proc = run_script(
        """
        import starburst as ray

        @ray.remote
        def f(x):
            return x * 21

        assert not ray.is_initialized()
        ref = f.remote(2)  # no init(): the first .remote() starts a local cluster
        assert ray.is_initialized()
        assert ray.get(ref, timeout=60) == 42
        ray.shutdown()
        assert not ray.is_initialized()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_second_init_raises_unless_ignore_reinit_error(run_script):
    proc = run_script(
        """
        import starburst as ray

        ray.init(num_cpus=1)
        try:
            ray.init(num_cpus=1)
        except RuntimeError as e:
            assert "ignore_reinit_error" in str(e), str(e)
            print("GOT-RUNTIME-ERROR")
        else:
            raise SystemExit("second init() did not raise")

        ray.init(num_cpus=1, ignore_reinit_error=True)  # no error
        assert ray.is_initialized()

        @ray.remote
        def f():
            return "still works"

        assert ray.get(f.remote(), timeout=60) == "still works"
        ray.shutdown()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)
    assert "GOT-RUNTIME-ERROR" in proc.stdout


def test_init_after_auto_init_raises(run_script):
    proc = run_script(
        """
        import starburst as ray

        @ray.remote
        def f():
            return 1

        assert ray.get(f.remote(), timeout=60) == 1
        try:
            ray.init()
        except RuntimeError:
            print("GOT-RUNTIME-ERROR")
        ray.shutdown()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)
    assert "GOT-RUNTIME-ERROR" in proc.stdout


def test_init_accepts_common_keyword_arguments(run_script):
    proc = run_script(
        """
        import starburst as ray

        ray.init(
            address="local",
            num_cpus=1,
            namespace="my_namespace",
            include_dashboard=False,
            log_to_driver=True,
            ignore_reinit_error=False,
        )

        @ray.remote
        def f():
            return "ok"

        assert ray.get(f.remote(), timeout=60) == "ok"
        ray.shutdown()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_init_runtime_env_env_vars_reach_tasks(run_script):
    proc = run_script(
        """
        import starburst as ray

        ray.init(num_cpus=1, runtime_env={"env_vars": {"JOB_LEVEL_VAR": "job-value"}})

        @ray.remote
        def read():
            import os
            return os.environ.get("JOB_LEVEL_VAR")

        assert ray.get(read.remote(), timeout=60) == "job-value"
        ray.shutdown()
        print("SCRIPT-OK")
        """,
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)


def test_driver_exits_cleanly_without_shutdown(run_script):
    proc = run_script(
        """
        import starburst as ray

        ray.init(num_cpus=1)

        @ray.remote
        def f():
            return 5

        assert ray.get(f.remote(), timeout=60) == 5
        print("SCRIPT-OK")
        # no shutdown(): interpreter exit must clean up and not hang
        """,
        timeout=60,
    )
    _ok(proc)
    assert proc.returncode == 0


# ----------------------------------------------------------------------------- log forwarding


# Task output reaches the driver asynchronously (in Ray too). The scripts wait for it as an event:
# SEEN collects what the driver printed, until every mark has appeared (WAIT_FOR_OUTPUT).
WATCH_OUTPUT = """
import sys
import time

SEEN = []

class _Tee:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        SEEN.append(text)
        return self.stream.write(text)
    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.stdout, sys.stderr = _Tee(sys.stdout), _Tee(sys.stderr)

def wait_for_output(*marks):
    deadline = time.monotonic() + 60
    while not all(m in "".join(SEEN) for m in marks):
        assert time.monotonic() < deadline, "never printed: %r" % (marks,)
        time.sleep(0.01)
"""

PRINT_SCRIPT = WATCH_OUTPUT + """
import starburst as ray

ray.init(num_cpus=1{extra})

@ray.remote
def speaker():
    import os
    print("hello-from-task-7f3a")  # no flush: the runtime must forward it anyway
    for i in range(5):
        print(f"numbered-line-{{i}}")
    print("stderr-from-task-91c2", file=sys.stderr)
    return os.getpid()

pid = ray.get(speaker.remote(), timeout=60)
{wait}
print(f"TASK-PID={{pid}}")
ray.shutdown()
print("SCRIPT-OK")
"""

#: With log_to_driver=False: the head has the output (in the job's log), and a later result, which
#: comes after it on the same stream, has reached the driver: had the head sent the output, the
#: driver would have it by then (shutdown prints what has come).
HEARD_NOTHING = """
from starburst.head import joblog

def job_output():
    try:
        return "".join(r.get("text", "") for r in joblog.read(joblog.find_job(None)))
    except LookupError:
        return ""

deadline = time.monotonic() + 60
while not all(m in job_output() for m in ("hello-from-task-7f3a", "stderr-from-task-91c2")):
    assert time.monotonic() < deadline, "the task's output never reached the job's log"
    time.sleep(0.01)
assert ray.get(ray.remote(lambda: 2).remote(), timeout=60) == 2
"""


def test_print_in_task_reaches_driver_with_prefix(run_script):
    wait = 'wait_for_output("hello-from-task-7f3a", "numbered-line-4", "stderr-from-task-91c2")'
    proc = run_script(PRINT_SCRIPT.format(extra="", wait=wait), timeout=SCRIPT_TIMEOUT)
    _ok(proc)
    pid = int(re.search(r"TASK-PID=(\d+)", proc.stdout).group(1))
    both = _plain(proc.stdout + proc.stderr)
    # Ray's format: "(speaker pid=12345) hello" (", ip=..." is added for other nodes)
    m = re.search(r"\(speaker pid=(\d+)[^)]*\) hello-from-task-7f3a", both)
    assert m, f"no prefixed task output in:\n{both}"
    assert int(m.group(1)) == pid
    for i in range(5):
        assert re.search(rf"\(speaker pid={pid}[^)]*\) numbered-line-{i}\b", both), both
    assert re.search(rf"\(speaker pid={pid}[^)]*\) stderr-from-task-91c2", _plain(proc.stderr)), proc.stderr


def test_log_to_driver_false_suppresses_task_output(run_script):
    proc = run_script(PRINT_SCRIPT.format(extra=", log_to_driver=False", wait=HEARD_NOTHING), timeout=SCRIPT_TIMEOUT)
    _ok(proc)
    both = proc.stdout + proc.stderr
    assert "hello-from-task-7f3a" not in both
    assert "stderr-from-task-91c2" not in both


def test_warnings_and_logging_in_task_reach_driver_stderr(run_script):
    proc = run_script(WATCH_OUTPUT + textwrap.dedent(
        """
        import starburst as ray

        ray.init(num_cpus=1)

        @ray.remote
        def noisy():
            import logging
            import warnings
            warnings.warn("careful-warning-5d1e")
            logging.warning("logged-warning-8b0f")
            return 1

        assert ray.get(noisy.remote(), timeout=60) == 1
        wait_for_output("careful-warning-5d1e", "logged-warning-8b0f")
        ray.shutdown()
        print("SCRIPT-OK")
        """),
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)
    assert "careful-warning-5d1e" in proc.stderr, proc.stderr
    assert "UserWarning" in proc.stderr, proc.stderr
    assert "logged-warning-8b0f" in proc.stderr, proc.stderr
    assert re.search(r"\(noisy pid=\d+[^)]*\).*careful-warning-5d1e", _plain(proc.stderr)), proc.stderr


def test_output_of_nested_tasks_reaches_driver(run_script):
    proc = run_script(WATCH_OUTPUT + textwrap.dedent(
        """
        import starburst as ray

        ray.init(num_cpus=2)

        @ray.remote
        def inner():
            print("inner-says-c3d4")
            return 1

        @ray.remote
        def outer():
            print("outer-says-a1b2")
            return ray.get(inner.remote())

        assert ray.get(outer.remote(), timeout=60) == 1
        wait_for_output("outer-says-a1b2", "inner-says-c3d4")
        ray.shutdown()
        print("SCRIPT-OK")
        """),
        timeout=SCRIPT_TIMEOUT,
    )
    _ok(proc)
    both = _plain(proc.stdout + proc.stderr)
    assert re.search(r"\(outer pid=\d+[^)]*\) outer-says-a1b2", both), both
    assert re.search(r"\(inner pid=\d+[^)]*\) inner-says-c3d4", both), both


@pytest.mark.slow
def test_an_idle_session_survives_keepalive_pings(run_script):
    """Streams ping when idle; the head and nodes must accept those pings (gRPC's default server
    answers frequent pings with GOAWAY "too_many_pings", ending an idle driver's session)."""
    proc = run_script(
        """
        import time
        import starburst
        starburst.init(num_cpus=1)
        assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=60) == 1
        time.sleep(35)  # idle: three pings (gRPC clamps the interval to at least 10 s)
        assert starburst.get(starburst.remote(lambda: 2).remote(), timeout=60) == 2
        starburst.shutdown()
        print("ok")
        """,
        env={"STARBURST_KEEPALIVE_S": "10"},
    )
    assert proc.stdout.strip() == "ok"
    assert "too_many_pings" not in proc.stderr
