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
