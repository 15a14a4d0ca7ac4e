"""Every Ray-style program in examples/ray/ (written with ``import ray``) runs unmodified through the
``starburst run`` runner (``python -m starburst.compat run``) on a private embedded cluster."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # moto round trips or whole scripts through starburst run: the full tier

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "ray").glob("*.py"))

# What each example must print (its result), beyond exiting 0.
EXPECTED = {
    "actor_pool_batch.py": "24 batches, 1536 predictions",
    "monte_carlo_pi.py": "estimated pi = 3.1",
    "parameter_server.py": "final loss",
    "word_count.py": "distinct, in 400 documents",
    "streaming_generators.py": "squares: [0, 1, 4, 9, 16]\ntokens: STREAM THESE WORDS\nkept ['first', 'second'], "
                               "third raised: the third value could not be computed",
    "actor_exits.py": "crash: ActorUnavailableError\nrestarted: True\nretired\nnot restarted after exit_actor",
    "cancel_async_call.py": "cancelled; the actor saw 1 cancellation",
    "dag_pipeline.py": "dag outputs: [142, 42]",
    "tqdm_progress.py": "loaded 40 records\nsum of squares 210630",
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_ray_example_runs_through_the_runner(path, tmp_path):
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("STARBURST_RAY_ALIAS", None)
    proc = subprocess.run([sys.executable, "-m", "starburst.compat", "run", str(path)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert EXPECTED[path.name] in proc.stdout, proc.stdout


def test_every_ray_example_has_an_expectation():
    assert EXAMPLES and sorted(p.name for p in EXAMPLES) == sorted(EXPECTED)


def test_ray_examples_are_not_run_by_plain_python():
    """tests/test_examples.py runs examples/*.py with plain python; these need the runner."""
    assert not list((ROOT / "examples").glob("*.py")) or all(
        "import ray\n" not in p.read_text() for p in (ROOT / "examples").glob("*.py"))
