"""starburst.compat: ``import ray`` resolves to starburst, and the ``starburst run`` runner
(``main_run`` / ``python -m starburst.compat run``) runs unmodified Ray scripts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import ROOT


def _run(script_path, *args, home, timeout=120, module=("-m", "starburst.compat", "run")):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["STARBURST_HOME"] = str(home)
    env.pop("STARBURST_RAY_ALIAS", None)
    return subprocess.run([sys.executable, *module, str(script_path), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(script_path.parent))


def _write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_alias_resolves_to_the_same_modules(run_script):
    proc = run_script("""
        import importlib, sys
        import starburst
        from starburst.compat import install_ray_alias
        install_ray_alias()
        install_ray_alias()  # idempotent

        import ray
        import ray.util
        import ray.util.queue
        import ray.util.multiprocessing
        import ray.exceptions
        from ray.util import ActorPool, as_completed, map_unordered
        from ray.util.queue import Queue, Empty
        from ray.util.multiprocessing import Pool
        from ray.exceptions import RayTaskError, GetTimeoutError

        assert ray is starburst and ray.init is starburst.init and ray.remote is starburst.remote
        assert ray.util is starburst.util and ray.util.ActorPool is starburst.util.ActorPool
        assert ray.util.queue is importlib.import_module("starburst.util.queue")
        assert ray.util.multiprocessing.Pool is importlib.import_module("starburst.util.multiprocessing").Pool
        assert ray.exceptions is starburst.exceptions and RayTaskError is starburst.exceptions.RayTaskError
        assert sys.modules["ray.util.actor_pool"] is sys.modules["starburst.util.actor_pool"]
        # The real modules keep their own identity.
        assert starburst.__spec__.name == "starburst" and ray.util.queue.__name__ == "starburst.util.queue"
        try:
            import ray.tune
        except ModuleNotFoundError as exc:
            assert exc.name == "ray.tune" and "starburst" in str(exc), exc
        else:
            raise AssertionError("ray.tune should not import")
        print("alias ok")
    """)
    assert "alias ok" in proc.stdout


def test_uninstall_restores_plain_imports(run_script):
    proc = run_script("""
        import sys
        from starburst.compat import install_ray_alias, uninstall_ray_alias
        install_ray_alias()
        import ray.util
        uninstall_ray_alias()
        assert "ray" not in sys.modules and "ray.util" not in sys.modules
        try:
            import ray
            print("real ray:", ray.__file__)
        except ImportError:
            print("no ray")
    """)
    assert proc.stdout.strip() in ("no ray",) or proc.stdout.startswith("real ray:")
    assert "starburst" not in proc.stdout


RAY_SCRIPT = """
    import os, sys, time
    import ray
    from ray.util import ActorPool, as_completed

    print("argv", sys.argv[1:])
    print("alias env", os.environ.get("STARBURST_RAY_ALIAS"))
    print("main", __name__)
    ray.init(num_cpus=2)

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def nested(n):
        return sum(ray.get([square.remote(i) for i in range(n)]))

    print("squares", sorted(as_completed([square.remote(i) for i in range(5)])))
    print("nested", ray.get(nested.remote(4)))
    try:
        ray.get(square.remote("x"))
    except TypeError:
        print("remote TypeError caught")
    ray.shutdown()
"""


def test_main_run_runs_a_ray_script(tmp_path):
    script = _write(tmp_path, "job.py", RAY_SCRIPT)
    proc = _run(script, "--flag", "value", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "argv ['--flag', 'value']" in out
    assert "alias env 1" in out
    assert "main __main__" in out
    assert "squares [0, 1, 4, 9, 16]" in out
    assert "nested 14" in out
    assert "remote TypeError caught" in out


def test_main_run_exit_codes_and_errors(tmp_path):
    home = tmp_path / "home"
    exits = _write(tmp_path, "exits.py", "import sys\nsys.exit(3)\n")
    assert _run(exits, home=home).returncode == 3
    clean = _write(tmp_path, "clean.py", "import sys\nprint('bye')\nsys.exit()\n")
    proc = _run(clean, home=home)
    assert proc.returncode == 0 and "bye" in proc.stdout
    raises = _write(tmp_path, "raises.py", """
        def boom():
            raise ValueError("kaboom")
        boom()
    """)
    proc = _run(raises, home=home)
    assert proc.returncode == 1
    assert "ValueError: kaboom" in proc.stderr and "raises.py" in proc.stderr
    assert "runpy" not in proc.stderr and "compat.py" not in proc.stderr  # only the script's frames
    missing = _run(tmp_path / "nope.py", home=home)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_main_run_usage(run_script):
    proc = run_script("""
        from starburst.compat import main_run
        assert main_run([]) == 2
        assert main_run(["--help"]) == 0
        print("usage ok")
    """)
    assert "usage ok" in proc.stdout
    assert "usage: starburst run" in proc.stderr


def test_script_helper_modules_import_ray(tmp_path):
    """A helper module next to the script does ``import ray`` too; its remote functions run."""
    _write(tmp_path, "helper.py", """
        import ray

        @ray.remote
        def triple(x):
            return 3 * x

        def total(n):
            return sum(ray.get([triple.remote(i) for i in range(n)]))
    """)
    script = _write(tmp_path, "main.py", """
        import ray
        import helper
        ray.init(num_cpus=2)
        print("total", helper.total(4))
    """)
    proc = _run(script, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "total 18" in proc.stdout


def test_tasks_can_import_ray_at_run_time(tmp_path):
    """Executors of a cluster started by ``starburst run`` install the alias (STARBURST_RAY_ALIAS=1):
    a task body that imports ray gets starburst."""
    script = _write(tmp_path, "late.py", """
        import ray
        ray.init(num_cpus=1)

        @ray.remote
        def which():
            import ray as r
            return r.__name__

        print("inside", ray.get(which.remote()))
    """)
    proc = _run(script, home=tmp_path / "home")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "inside starburst" in proc.stdout
