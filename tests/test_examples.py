"""Every program in examples/ runs to completion on the embedded cluster."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip(), "an example should show its result"


def test_there_are_examples():
    assert EXAMPLES
