"""runtime_env on the local cluster: env_vars, working_dir and py_modules are honoured; package
installs are refused at the call site with a clear error."""

from __future__ import annotations

import os
import textwrap

import pytest

TIMEOUT = 60


@pytest.fixture
def project(tmp_path):
    """A directory with a module and a data file, and a package elsewhere; neither on sys.path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "helper_mod_xyz.py").write_text("def answer():\n    return 'from working_dir'\n")
    (work / "data.txt").write_text("relative file contents")
    libs = tmp_path / "libs"
    pkg = libs / "pkg_abc_123"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 'from py_modules'\n")
    return work, pkg


def test_working_dir_is_cwd_and_importable(cluster, project):
    ray = cluster
    work, _ = project

    @ray.remote(runtime_env={"working_dir": str(work)})
    def use():
        import helper_mod_xyz

        with open("data.txt") as f:
            return helper_mod_xyz.answer(), f.read(), os.getcwd()

    answer, data, cwd = ray.get(use.remote(), timeout=TIMEOUT)
    assert (answer, data, cwd) == ("from working_dir", "relative file contents", str(work))

    @ray.remote
    def plain():
        return os.getcwd()

    # The next task on the same executor is back where it was.
    assert all(c != str(work) for c in ray.get([plain.remote() for _ in range(8)], timeout=TIMEOUT))


def test_py_modules_make_a_package_importable(cluster, project):
    ray = cluster
    _, pkg = project

    @ray.remote
    def use():
        import pkg_abc_123

        return pkg_abc_123.VALUE

    assert ray.get(use.options(runtime_env={"py_modules": [str(pkg)]}).remote(), timeout=TIMEOUT) == "from py_modules"


def test_actor_keeps_its_runtime_env(cluster, project):
    ray = cluster
    work, _ = project

    @ray.remote
    class Reader:
        def read(self):
            with open("data.txt") as f:
                return f.read(), os.environ.get("READER_FLAG")

    r = Reader.options(runtime_env={"working_dir": str(work), "env_vars": {"READER_FLAG": "on"}}).remote()
    assert ray.get([r.read.remote() for _ in range(3)], timeout=TIMEOUT) == [("relative file contents", "on")] * 3


def test_package_installs_are_refused_at_the_call_site(cluster):
    ray = cluster

    @ray.remote
    def f():
        return 1

    advice = r"install them into this Python environment.*init\(cluster=.fargate., runtime_env="
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError, match=advice):
        f.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError, match="not a directory"):
        f.options(runtime_env={"working_dir": "/no/such/dir/anywhere"})
    with pytest.raises(ValueError, match="not supported"):
        f.options(runtime_env={"nsight": "default"})


@pytest.mark.slow
def test_job_level_working_dir_from_init(run_script, project):
    work, _ = project
    proc = run_script(textwrap.dedent(f"""
        import starburst as ray
        ray.init(num_cpus=1, runtime_env={{"working_dir": {str(work)!r}}})

        @ray.remote
        def use():
            import helper_mod_xyz
            return helper_mod_xyz.answer()

        print(ray.get(use.remote()))
        ray.shutdown()
    """))
    assert "from working_dir" in proc.stdout


def test_a_function_follows_the_job_env_and_the_options_of_each_call(run_script):
    """What calls share is built once per options, session and job runtime_env, so the same
    function under a second init() gets that job's env, and .options() calls their own."""
    proc = run_script("""
        import os
        import starburst as ray

        @ray.remote
        def env(name):
            return os.environ.get(name, "")

        @ray.remote
        def cpus():
            return ray.get_runtime_context().get_assigned_resources().get("CPU")

        ray.init(num_cpus=2, runtime_env={"env_vars": {"JOB_VAR": "one"}})
        print("first", ray.get(env.remote("JOB_VAR")), ray.get(env.remote("JOB_VAR")))
        print("options", ray.get(env.options(runtime_env={"env_vars": {"JOB_VAR": "task"}}).remote("JOB_VAR")),
              ray.get(env.remote("JOB_VAR")))
        print("cpus", ray.get(cpus.remote()), ray.get(cpus.options(num_cpus=2).remote()), ray.get(cpus.remote()))
        ray.shutdown()
        ray.init(num_cpus=1, runtime_env={"env_vars": {"JOB_VAR": "two"}})
        print("second", ray.get(env.remote("JOB_VAR")))
        ray.shutdown()
    """)
    assert "first one one" in proc.stdout
    assert "options task one" in proc.stdout
    assert "cpus 1.0 2.0 1.0" in proc.stdout
    assert "second two" in proc.stdout
