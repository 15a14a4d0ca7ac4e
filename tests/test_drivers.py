"""Several drivers on one cluster, with real driver processes: nobody's shutdown() ends another's work."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import psutil
import pytest

from conftest import wait_gone

ROOT = pathlib.Path(__file__).resolve().parent.parent

STARTER = """
import logging, sys, starburst
logging.basicConfig(level=logging.INFO)  # so the test sees what shutdown() decided
starburst.init(num_cpus=2)
print("ready", flush=True)
sys.stdin.readline()          # the test says when to leave
starburst.shutdown()
print("left", flush=True)
"""

JOINER = """
import json, os, sys, time, starburst
from starburst.driver import process
starburst.init()
info = process.find_head()
print(json.dumps({"head_pid": info.pid}), flush=True)

@starburst.remote
def gated(i, gate):
    while not os.path.exists(gate):   # runs until the test opens the gate
        time.sleep(0.01)
    return i

refs = [gated.remote(i, sys.argv[1]) for i in range(8)]
print("submitted", flush=True)
print(json.dumps({"sum": sum(starburst.get(refs, timeout=120))}), flush=True)
starburst.shutdown()
"""


def _spawn(source: str, home: pathlib.Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", source, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_the_starter_leaving_keeps_the_cluster_up_for_another_driver(tmp_path):
    home = tmp_path / "home"
    gate = tmp_path / "gate"
    starter = _spawn(STARTER, home)
    joiner = None
    try:
        assert starter.stdout.readline().strip() == "ready", starter.stderr.read()
        joiner = _spawn(JOINER, home, str(gate))
        head_pid = json.loads(joiner.stdout.readline())["head_pid"]
        assert joiner.stdout.readline().strip() == "submitted", joiner.stderr.read()
        # The driver that started the cluster leaves while the other's tasks run: its shutdown()
        # sees the other driver and returns (it used to wait 20 s, then end the cluster).
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.stdout.readline().strip() == "left", starter.stderr.read()
        assert starter.wait(30) == 0
        assert "the cluster stays up for the 1 other driver(s)" in starter.stderr.read()
        assert psutil.pid_exists(head_pid), "the cluster ended while another driver was using it"
        gate.touch()
        line = joiner.stdout.readline()
        assert line, joiner.stderr.read()
        assert json.loads(line) == {"sum": sum(range(8))}
        assert joiner.wait(60) == 0, joiner.stderr.read()
        # The last driver has left: the cluster ends.
        assert wait_gone([head_pid], 30) == []
        assert not (home / "head.json").exists()
    finally:
        for proc in (starter, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_a_driver_joining_a_cluster_that_is_ending_starts_a_new_one(tmp_path):
    """Drivers coming and going in turn on one STARBURST_HOME each get a working cluster."""
    home = tmp_path / "home"
    source = ("import starburst\nstarburst.init()\n"
              "assert starburst.get(starburst.remote(lambda: 5).remote()) == 5\nstarburst.shutdown()\n")
    procs = [_spawn(source, home) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]


STARTS_A_HEAD = """
import sys, starburst
from starburst.driver import process
address = process.start_head(1, exit_when_unused=True)   # as init() does, before its session opens
print("started", process.find_head().pid, flush=True)
sys.stdin.readline()          # the test says when to connect
starburst.init()
assert starburst.get(starburst.remote(lambda: 7).remote()) == 7
print("joined", process.find_head().pid, flush=True)
starburst.shutdown()
"""

COMES_AND_GOES = """
import starburst
starburst.init()
assert starburst.get(starburst.remote(lambda: 5).remote()) == 5
starburst.shutdown()
"""


@pytest.mark.slow
def test_a_driver_that_comes_and_goes_first_does_not_end_the_cluster_under_its_starter(tmp_path):
    """init() starts a head, and another driver finds it, uses it and leaves before the starter's
    session opens: the head must not end as 'unused' (the starter then found it shutting down)."""
    from conftest import wait_for

    home = tmp_path / "home"
    starter = _spawn(STARTS_A_HEAD, home)
    try:
        line = starter.stdout.readline().split()
        assert line[:1] == ["started"], starter.stderr.read()
        head_pid = int(line[1])
        other = _spawn(COMES_AND_GOES, home)
        _, err = other.communicate(timeout=120)
        assert other.returncode == 0, err[-3000:]

        def drivers() -> int | None:
            out = subprocess.run([sys.executable, "-m", "starburst", "status", "--json"], capture_output=True,
                                 text=True, env=dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT)))
            return json.loads(out.stdout)["drivers"] if out.returncode == 0 else None

        wait_for(lambda: drivers() != 1, 60, "the other driver's session to close")
        assert psutil.pid_exists(head_pid) and drivers() == 0, "the cluster ended before its starter joined it"
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.stdout.readline().split() == ["joined", str(head_pid)], starter.stderr.read()
        assert starter.wait(60) == 0
        assert wait_gone([head_pid], 30) == []  # the starter has left too: the cluster ends
    finally:
        for proc in (starter,):
            if proc.poll() is None:
                proc.kill()
