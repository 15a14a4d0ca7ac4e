"""Errors that say what happened, with real processes: a lost head, refs of a finished cluster,
values and exceptions that can't be rebuilt on the driver, a stuck stdout, a stale head record."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_lost_head_raises_session_lost_from_get_and_wait(run_script):
    proc = run_script(
        """
        import os, signal, threading, time
        import starburst
        from starburst.exceptions import SessionLostError, GetTimeoutError

        starburst.init(num_cpus=1)

        @starburst.remote
        def forever():
            time.sleep(3600)

        ref = forever.remote()
        caught = {}

        def blocked_get():
            try:
                starburst.get(ref, timeout=120)
            except BaseException as exc:
                caught["get"] = exc

        t = threading.Thread(target=blocked_get)
        t.start()
        os.kill(starburst.api._started_head.pid, signal.SIGKILL)
        t.join(60)
        assert not t.is_alive()
        exc = caught["get"]
        assert isinstance(exc, SessionLostError) and not isinstance(exc, GetTimeoutError), repr(exc)
        try:
            starburst.wait([ref], timeout=30)
        except SessionLostError as exc:
            print("wait:", exc)
        else:
            raise AssertionError("wait() returned after the head was lost")
        print("get:", caught["get"])
        """, timeout=120,
    )
    assert "get: lost the session with the head" in proc.stdout, proc.stdout
    assert "gone or does not answer" in proc.stdout or "closed the session" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_a_ref_of_a_finished_cluster_fails_at_once_and_starts_nothing(run_script, tmp_path):
    proc = run_script(
        """
        import os, starburst
        from starburst.exceptions import SessionLostError
        starburst.init(num_cpus=1)
        ref = starburst.put(41)
        starburst.shutdown()
        for call in (lambda: starburst.get(ref), lambda: starburst.wait([ref])):
            try:
                call()
            except SessionLostError as exc:
                print("raised:", exc)
            else:
                raise AssertionError("no error")
        print("head running:", os.path.exists(os.path.join(os.environ["STARBURST_HOME"], "head.json")))
        """, timeout=60,
    )
    assert proc.stdout.count("raised:") == 2 and "has ended" in proc.stdout, proc.stdout
    assert "head running: False" in proc.stdout


@pytest.mark.slow
def test_exceptions_and_values_that_cannot_be_rebuilt_keep_the_remote_story(run_script):
    proc = run_script(
        """
        import starburst
        from starburst.exceptions import RayTaskError, RaySystemError
        starburst.init(num_cpus=1)

        class TwoArgs(Exception):
            def __init__(self, a, b):
                super().__init__(a)

        @starburst.remote
        def fails():
            raise TwoArgs("first", "second")     # the marker line

        try:
            starburst.get(fails.remote())
        except RayTaskError as exc:
            print("task error:", str(exc).replace("\\n", " | "))

        def boom():
            raise RuntimeError("cannot rebuild me here")

        class Unloadable:
            def __reduce__(self):
                return (boom, ())

        @starburst.remote
        def returns_unloadable():
            return Unloadable()

        try:
            starburst.get(returns_unloadable.remote())
        except RaySystemError as exc:
            print("value error:", exc)
        starburst.shutdown()
        """, timeout=90,
    )
    out = proc.stdout
    assert "task error:" in out and "TwoArgs" in out and "the marker line" in out, out + proc.stderr[-2000:]
    assert "value error:" in out and "could not be deserialized" in out and "cannot rebuild me here" in out, out


@pytest.mark.slow
def test_a_stdout_nobody_reads_does_not_block_the_session(tmp_path):
    marker = tmp_path / "done"
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys, starburst\n"
        "starburst.init(num_cpus=1)\n"
        "@starburst.remote\n"
        "def chatty():\n"
        "    for i in range(100_000):\n"
        "        print('x' * 100)\n"
        "    return 1\n"
        "@starburst.remote\n"
        "def quiet(x):\n"
        "    return x + 1\n"
        "assert starburst.get(quiet.remote(starburst.get(chatty.remote(), timeout=300)), timeout=300) == 2\n"
        f"open({str(marker)!r}, 'w').write('ok')\n"
    )
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the marker; the driver's stdout stays unread meanwhile
        assert marker.exists(), "the driver hung with its stdout unread"
    finally:
        out, err = driver.communicate(timeout=120)  # reading now lets it finish
    assert b"lines of task output were dropped" in err, err[-2000:]


@pytest.mark.slow
def test_a_head_record_whose_pid_was_reused_is_recognised_as_stale(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    # This test's own (live) pid, as if the head had died and its pid had been reused.
    (home / "head.json").write_text(json.dumps({
        "address": "unix:/tmp/starburst-nonexistent/head.sock", "pid": os.getpid(), "cluster_id": "deadbeef0000",
        "started_by": "up", "provider": "local"}))
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    # A down that took the live pid for the head would wait for it to exit: this one would hang
    # (and hit the subprocess timeout) instead of answering "nothing runs".
    down = subprocess.run([sys.executable, "-m", "starburst", "down", "--timeout", "3600"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert down.returncode == 3, down.stdout + down.stderr
    (home / "head.json").write_text(json.dumps({
        "address": "unix:/tmp/starburst-nonexistent/head.sock", "pid": os.getpid(), "cluster_id": "deadbeef0000",
        "started_by": "up", "provider": "local"}))
    ok = subprocess.run([sys.executable, "-c", ("import starburst\nstarburst.init(num_cpus=1)\n"
                         "print(starburst.get(starburst.remote(lambda: 6 * 7).remote()))\nstarburst.shutdown()")],
                        capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0 and ok.stdout.strip() == "42", ok.stderr[-2000:]


@pytest.mark.slow
def test_an_unresponsive_head_raises_session_lost(run_script):
    """A head that stops answering (here: SIGSTOP) is noticed by the session's ping rule
    (STARBURST_HEAD_TIMEOUT_S): get raises SessionLostError well before its own timeout (the streams'
    general keepalive, 20 s + 10 s, would let it time out first) instead of blaming the task."""
    proc = run_script(
        """
        import os, signal, time
        import starburst
        from starburst.exceptions import SessionLostError
        starburst.init(num_cpus=1)

        @starburst.remote
        def forever():
            time.sleep(3600)

        ref = forever.remote()
        head = starburst.api._started_head.pid
        os.kill(head, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            starburst.get(ref, timeout=25)
        except SessionLostError as exc:
            print(f"lost after {time.monotonic() - t0:.0f} s:", exc)
        finally:
            os.kill(head, signal.SIGKILL)
            os.kill(head, signal.SIGCONT)
        """, env={"STARBURST_HEAD_TIMEOUT_S": "2"}, timeout=200,
    )
    assert "lost after" in proc.stdout and "does not answer" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "nothing came from it for 2 s" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_a_driver_of_another_version_is_refused_with_what_to_do(run_script):
    """The head says its version in the welcome; a driver of another starburst version (a head left
    running by an older install) is refused at init() with the fix, not left to fail on a pickle."""
    proc = run_script(
        """
        import starburst
        from starburst.driver import client

        starburst.init(num_cpus=1)
        starburst.shutdown()              # an init()-started head: start one that stays up instead
        from starburst.driver import process
        info = process.start_head(1, exit_when_unused=False)
        try:
            client.__version__ = "0.0.0-another"
            try:
                starburst.init()
            except ConnectionError as exc:
                print("REFUSED", exc)
        finally:
            process.stop_head(info, timeout=30.0)
        """,
        check=True,
    )
    assert "REFUSED the running starburst head is version" in proc.stdout, proc.stdout + proc.stderr
    assert "this driver 0.0.0-another" in proc.stdout and "starburst down" in proc.stdout
