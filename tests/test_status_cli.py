"""`starburst status --json` without a cluster, and `status --watch` redrawing until Ctrl-C."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _env(home: pathlib.Path) -> dict:
    return dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))


def test_status_json_without_a_cluster(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "starburst", "status", "--json"], capture_output=True, text=True,
                          timeout=60, env=_env(tmp_path / "home"))
    assert proc.returncode == 3
    assert json.loads(proc.stdout) == {"running": False}


def test_status_watch_redraws_until_interrupted(tmp_path):
    # With faulthandler on, SIGABRT makes a hung watch print where each of its threads is.
    proc = subprocess.Popen([sys.executable, "-m", "starburst", "status", "--watch", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(_env(tmp_path / "home"), PYTHONFAULTHANDLER="1"))
    try:
        lines = []
        while sum("Ctrl-C to stop" in line for line in lines) < 3:
            line = proc.stdout.readline()
            assert line, f"status --watch ended early: {lines} {proc.stderr.read()}"
            lines.append(line)
        assert sum("no starburst cluster is running" in line for line in lines) >= 3
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"status --watch did not stop on Ctrl-C; where it was:\n{err}") from None
        assert code == 0, proc.stderr.read()
    finally:
        proc.kill()
