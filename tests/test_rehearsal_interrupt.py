"""Interrupting a Fargate cluster's driver at any point leaves nothing billing (offline rehearsal).

A driver process runs ``init(cluster="fargate")`` then a ``get`` (or the CLI runs
``starburst up --cluster fargate``); it gets a signal at one point of its life (after the estimate
is printed, once RunTask has placed tasks, while nodes join, during a ``get``). An ``up`` that had
already succeeded when the signal came leaves its cluster up, as asked: ``down`` then stops it.
After each: within ``BOUND_S`` no task is RUNNING or PENDING in ECS (moto), no node process and no
head process of this rehearsal is left, and the driver itself returned promptly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import psutil
import pytest

from conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BOUND_S = 30.0

DRIVER = """
import sys, time
import starburst

starburst.init(cluster="fargate", workers=2, lease=60, cpu=1, memory="2GB")
print("READY", flush=True)

@starburst.remote
def slow(x):
    time.sleep(120)
    return x

print("GETTING", flush=True)
starburst.get([slow.remote(i) for i in range(4)])
"""


def _heads(home) -> list[psutil.Process]:
    """Head processes of this rehearsal (by their STARBURST_HOME), wherever they were reparented."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "starburst.head" in (proc.info["cmdline"] or []) and \
                    proc.environ().get("STARBURST_HOME") == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class _Driver:
    def __init__(self, *argv) -> None:
        self.proc = subprocess.Popen([sys.executable, *map(str, argv)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


POINTS = [
    # (point, signal)
    ("estimate printed", signal.SIGINT),
    ("tasks placed", signal.SIGINT),
    ("tasks placed", signal.SIGKILL),
    ("tasks placed", signal.SIGHUP),
    ("nodes joining", signal.SIGTERM),
    ("during get", signal.SIGINT),
    ("during get", signal.SIGKILL),
]


DRIVER_SHUTDOWN = """
import starburst

starburst.init(cluster="fargate", workers=2, lease=60, cpu=1, memory="2GB")
assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=120) == 1
print("SHUTTING DOWN", flush=True)
starburst.shutdown()
print("SHUT DOWN", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_an_interrupted_shutdown_leaves_nothing_running(rehearsal, tmp_path, sig):
    """Ctrl-C (or a kill) while shutdown() stops the workers: they are stopped all the same."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_SHUTDOWN)
    for attempt in range(3):  # until the signal lands while shutdown() runs (it may be over first)
        with rehearsal.agent(tmp_path / f"nodes-{attempt}") as agent:
            driver = _Driver(script)
            try:
                wait_for(lambda d=driver: d.saw("SHUTTING DOWN") or d.proc.poll() is not None, 180, "shutdown")
                interrupted = driver.proc.poll() is None and not driver.saw("SHUT DOWN")
                if interrupted:
                    driver.proc.send_signal(sig)
                driver.proc.wait(BOUND_S)  # returns promptly
                wait_for(lambda: rehearsal.running_tasks() == [], BOUND_S, "no task RUNNING or PENDING")
                wait_for(lambda: not _heads(rehearsal.home), BOUND_S, "the head to exit")
                wait_for(lambda a=agent: not a.alive(), BOUND_S, "the node processes to exit")
            finally:
                if driver.proc.poll() is None:
                    driver.proc.kill()
                for head in _heads(rehearsal.home):
                    head.terminate()
        if interrupted:
            return
    pytest.fail("shutdown() was over before the signal three times: nothing was interrupted")


UP = ["-m", "starburst", "up", "--cluster", "fargate", "--workers", "2", "--cpu", "1", "--memory", "2GB",
      "--lease", "60"]
CASES = [("driver", point, sig) for point, sig in POINTS] + [
    ("up", "estimate printed", signal.SIGINT),
    ("up", "tasks placed", signal.SIGINT),
    ("up", "tasks placed", signal.SIGKILL),
    ("up", "tasks placed", signal.SIGTERM),
]


@pytest.mark.parametrize("who,point,sig", CASES,
                         ids=[f"{w}-{p.replace(' ', '-')}-{s.name}" for w, p, s in CASES])
def test_an_interrupted_driver_leaves_nothing_running(rehearsal, tmp_path, who, point, sig):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    with rehearsal.agent(tmp_path / "nodes") as agent:
        driver = _Driver(script) if who == "driver" else _Driver(*UP)
        try:
            conditions = {
                "estimate printed": lambda: driver.saw("about $"),
                "tasks placed": lambda: rehearsal.running_tasks(),
                "nodes joining": lambda: agent.alive() and not driver.saw("READY"),
                "during get": lambda: driver.saw("GETTING") and len(agent.alive()) == 2,
            }
            wait_for(lambda: conditions[point]() or driver.proc.poll() is not None, 120, point)
            if who == "up" and driver.proc.poll() == 0:
                pass  # 'up' had finished before this point: then it must have said so, and down stops it
            else:
                assert driver.proc.poll() is None, "\n".join(driver.lines)
                driver.proc.send_signal(sig)
            code = driver.proc.wait(BOUND_S)  # the command returns promptly (or this raises)
            if who == "up" and driver.saw("stop it with 'starburst down'"):
                # 'up' had said the cluster is up (its last line) when the signal came, so it is, as
                # asked, whatever the exit code; 'down' must then stop all of it within the bound.
                down = subprocess.run([sys.executable, "-m", "starburst", "down"], capture_output=True,
                                      text=True, timeout=BOUND_S)
                assert down.returncode == 0, down.stderr
            wait_for(lambda: rehearsal.running_tasks() == [], BOUND_S,
                  f"no task RUNNING or PENDING (exit code {code}; output: {driver.lines[-5:]})")
            wait_for(lambda: not _heads(rehearsal.home), BOUND_S, "the head to exit")
            wait_for(lambda: not agent.alive(), BOUND_S, "the node processes to exit")
        finally:
            if driver.proc.poll() is None:
                driver.proc.kill()
            for head in _heads(rehearsal.home):  # never leave one to the next case
                head.terminate()
