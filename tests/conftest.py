"""Shared fixtures: every test session gets its own STARBURST_HOME, so tests never find or disturb a
head that a developer started on this machine, and a module-scoped embedded cluster."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import psutil
import pytest

# Session fixtures for the AWS control plane (moto server) and S3 (SeaweedFS): registered once
# here, so every module shares one server of each instead of starting its own.
pytest_plugins = ("aws_fixtures", "s3_fixtures")

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def starburst_home():
    home = tempfile.mkdtemp(prefix="starburst-test-home-")
    os.environ["STARBURST_HOME"] = home
    yield pathlib.Path(home)


@pytest.fixture(scope="module")
def cluster(starburst_home):
    """An embedded cluster with 2 CPUs for the whole test module; yields the starburst module."""
    import starburst

    starburst.init(num_cpus=2)
    yield starburst
    starburst.shutdown()


@pytest.fixture
def run_script(tmp_path, starburst_home):
    """Run a Python source text in a fresh interpreter; return the CompletedProcess (text mode)."""
    import subprocess
    import textwrap

    def run(source: str, timeout: float = 120, env: dict | None = None, check: bool = True):
        path = tmp_path / "script.py"
        path.write_text(textwrap.dedent(source))
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        # A private home: the script starts (and must stop) its own cluster, never the module's.
        full_env["STARBURST_HOME"] = str(tmp_path / "home")
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, str(path)], capture_output=True, text=True, timeout=timeout, env=full_env
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


# ------------------------------------------------------------------ shared helpers (import them from
# conftest): tests wait for events with a bound, never for a fixed time.


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; after ``timeout``
    seconds fail the test saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def head_caught_up(ray, timeout: float = 60) -> None:
    """Wait until the head has applied what this driver sent so far (releases included): a task's
    round trip goes through the head after them. A wrong release by this driver has taken effect
    by then; one from an executor comes on its node's stream, which this does not wait for."""
    assert ray.get(ray.remote(lambda: None).remote(), timeout=timeout) is None


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    """Wait for the processes to exit; return those still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not gone(p)]
    return alive


def cli(home: pathlib.Path, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m starburst ARGS`` with ``home`` as STARBURST_HOME (text output captured)."""
    full_env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "starburst", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def rehearsal(moto_server, s3_server, tmp_path_factory):
    """The offline Fargate rehearsal (tests/rehearsal/): moto for the AWS APIs, SeaweedFS for S3, a
    STARBURST_HOME of its own; one per test module."""
    from rehearsal.fargate import Rehearsal

    r = Rehearsal(moto_server, s3_server, tmp_path_factory.mktemp("fargate-home")).enter()
    try:
        yield r
    finally:
        r.exit()


@pytest.fixture
def agent(rehearsal, tmp_path):
    """The rehearsal's fake ECS agent: runs the real node program for each task the head launches.
    Stops the test's cluster at the end, even after a failure half-way."""
    import starburst

    with rehearsal.agent(tmp_path / "nodes") as a:
        try:
            yield a
        finally:
            starburst.shutdown()  # while the nodes still run: the cluster stops them itself
