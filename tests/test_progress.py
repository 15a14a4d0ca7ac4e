"""Progress: a long get() shows a bar in a terminal, never when its output is piped; the explicit
``starburst.progress`` helper yields refs as they finish."""

from __future__ import annotations

import os
import pathlib
import pty
import select
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Each task waits until the bar has been drawn (the driver's stderr is read by the test, which
# creates the flag file once it saw the bar), so the get is long for certain, without a fixed delay.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    import starburst

    starburst.init(num_cpus=2)

    @starburst.remote
    def slow(i, flag):
        print("started", i, flush=True)
        while not os.path.exists(flag):
            time.sleep(0.02)
        return i

    refs = [slow.remote(i, sys.argv[1]) for i in range(6)]
    # Whether this get would draw a bar is decided at its start, by this (synchronously):
    print("BARS", __import__("importlib").import_module("starburst.progress").interactive(), flush=True)
    print("SUM", sum(starburst.get(refs)), flush=True)
    starburst.shutdown()
""")


def _read_all(fds, after_each=None) -> dict[int, bytes]:
    """Read ``fds`` (pseudo-terminal masters or pipes) until every one is closed, calling
    ``after_each(chunks)`` after each read; fails if nothing comes for 60 s."""
    chunks = {fd: b"" for fd in fds}
    open_fds = set(chunks)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 60)
        assert ready, f"no output for 60 s: {chunks}"
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other end closed
                data = b""
            if not data:
                open_fds.discard(fd)
            chunks[fd] += data
        if after_each is not None:
            after_each(chunks)
    return chunks


def _run(tmp_path: pathlib.Path, stdout_is_tty: bool) -> tuple[str, str]:
    """Run SCRIPT with stderr on a pseudo-terminal (stdout too, or piped); returns (stdout, stderr)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    flag = tmp_path / ("flag-tty" if stdout_is_tty else "flag-pipe")
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT),
               STARBURST_PROGRESS_DELAY="0.3", COLUMNS="100")
    env.pop("STARBURST_PROGRESS", None)
    err_master, err_slave = pty.openpty()
    if stdout_is_tty:
        out_master, out_slave = pty.openpty()
        stdout = out_slave
    else:
        out_master, out_slave = None, None
        stdout = subprocess.PIPE
    proc = subprocess.Popen([sys.executable, str(script), str(flag)], stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=err_slave, env=env)
    os.close(err_slave)
    if out_slave is not None:
        os.close(out_slave)
    out_fd = out_master if out_master is not None else proc.stdout.fileno()

    def release(chunks: dict[int, bytes]) -> None:
        if flag.exists():
            return
        if stdout_is_tty and b"get:" in chunks[err_master]:
            flag.touch()  # the bar is drawn: let the tasks finish
        elif not stdout_is_tty and b"BARS" in chunks[out_fd] and b"started" in chunks[out_fd]:
            flag.touch()  # the get decided on its bar (BARS says how) and its tasks run

    try:
        chunks = _read_all([out_fd, err_master], release)
        assert proc.wait(60) == 0, chunks
    finally:
        proc.kill()
        for fd in (out_master, err_master):
            if fd is not None:
                os.close(fd)
    return chunks[out_fd].decode(errors="replace"), chunks[err_master].decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_in_a_terminal_and_none_when_piped(tmp_path):
    out, err = _run(tmp_path, stdout_is_tty=True)
    assert "BARS True" in out and "SUM 15" in out
    assert "get:" in err and "/6" in err and "6/6" in err, err

    out, err = _run(tmp_path, stdout_is_tty=False)
    assert "BARS False" in out and "SUM 15" in out
    assert "get:" not in err and "/6" not in err, err
    assert "get:" not in out


def test_progress_helper_yields_refs_as_they_finish(cluster, capsys):
    @cluster.remote
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(20)]
    seen = list(cluster.progress(refs, desc="squares"))
    assert sorted(seen, key=refs.index) == refs and len(seen) == 20
    err = capsys.readouterr().err
    assert "squares" in err and "20/20" in err, err


def test_automatic_bars_only_where_someone_looks(monkeypatch):
    import types

    import importlib

    mod = importlib.import_module("starburst.progress")  # (starburst.progress is the function)
    monkeypatch.delenv("STARBURST_PROGRESS", raising=False)
    monkeypatch.setattr(mod, "enabled", None)
    assert not mod.interactive()  # pytest captures stdout: not a terminal, not a notebook

    class ZMQInteractiveShell:  # what a Jupyter kernel's get_ipython() returns
        pass

    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert mod.interactive()
    monkeypatch.setenv("STARBURST_PROGRESS", "0")
    assert not mod.interactive()
    monkeypatch.delenv("STARBURST_PROGRESS")
    mod.configure_progress(False)
    assert not mod.interactive()
    mod.configure_progress(None)
    assert mod.interactive()


def test_fargate_cluster_line():
    import importlib

    mod = importlib.import_module("starburst.progress")
    state = {"nodes": [{}, {}], "cluster": {"provider": "fargate", "workers": [0, 20], "nodes_pending": 3,
                                            "cost_per_hour": 0.41, "cost_usd": 0.0123, "max_cost": 5.0,
                                            "budget_left": 4.9877}}
    assert mod.format_cluster(state) == "workers 2 joined, 3 starting (of 0-20), $0.41/h, $0.0123 so far, $4.99 left"
    assert mod.format_cluster({"nodes": [{}], "cluster": {"provider": "local"}}) == ""


def _run_through_runner(script: pathlib.Path, tmp_path: pathlib.Path, tty: bool) -> tuple[int, str, str]:
    """Run ``script`` with ``starburst run`` (stdout and stderr on pseudo-terminals, or piped)."""
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), COLUMNS="120")
    env.pop("STARBURST_PROGRESS", None)
    env.pop("STARBURST_RAY_ALIAS", None)
    cmd = [sys.executable, "-m", "starburst.compat", "run", str(script)]
    if not tty:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=120,
                              cwd=str(tmp_path))
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    masters, slaves = zip(pty.openpty(), pty.openpty())
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=slaves[0], stderr=slaves[1], env=env,
                            cwd=str(tmp_path))
    for fd in slaves:
        os.close(fd)
    try:
        chunks = _read_all(masters)
        code = proc.wait(60)
    finally:
        proc.kill()
        for fd in masters:
            os.close(fd)
    return code, chunks[masters[0]].decode(errors="replace"), chunks[masters[1]].decode(errors="replace")


@pytest.mark.slow
def test_tqdm_ray_bars_from_tasks_are_drawn_by_the_driver(tmp_path):
    """examples/ray/tqdm_progress.py (unmodified Ray code) through ``starburst run``: in a terminal each
    task's and the actor's bar is drawn by the driver with tqdm; piped, plain lines say the counts; the
    lines that carry the bars' state never show."""
    from starburst.experimental.tqdm_ray import MARK

    script = ROOT / "examples" / "ray" / "tqdm_progress.py"
    code, out, err = _run_through_runner(script, tmp_path, tty=True)
    assert code == 0, out + err
    assert "loaded 40 records" in out
    for desc, total in (("part 0", 60), ("part 1", 60), ("part 2", 60), ("loading", 40)):
        assert f"{desc}: 100%|" in err and f"{total}/{total}" in err, err
    assert "(crunch pid=" in err and "(Loader pid=" in err, err
    assert MARK.strip() not in out + err

    code, out, err = _run_through_runner(script, tmp_path, tty=False)
    assert code == 0, out + err
    assert "loaded 40 records" in out
    assert "part 1: 60/60 it" in err and "loading: 40/40 it" in err, err
    assert "%|" not in err and "\r" not in err, err
    assert MARK.strip() not in out + err


def test_tqdm_ray_state_lines_are_rendered_not_printed(monkeypatch, capsys):
    """What a task's bar sends (one marked line per flush, forced on close) becomes a plain count line
    on the driver when nobody watches; ordinary lines are left to be printed."""
    from starburst import _runtime
    from starburst.experimental import tqdm_ray

    monkeypatch.setattr(_runtime, "executor_client_factory", lambda: None)  # as inside a task
    bar = tqdm_ray.tqdm(range(3), desc="work", flush_interval_s=3600)
    assert list(bar) == [0, 1, 2]
    sent = [line for line in capsys.readouterr().out.splitlines()]
    assert len(sent) == 3 and all(line.startswith(tqdm_ray.MARK) for line in sent), sent  # start, total, close
    monkeypatch.setattr(_runtime, "executor_client_factory", None)
    monkeypatch.setattr(tqdm_ray, "_bars", tqdm_ray._Bars())
    tqdm_ray._bars._draw = False
    assert all(tqdm_ray.show("(f pid=1) ", line) for line in sent)
    assert not tqdm_ray.show("(f pid=1) ", "an ordinary line")
    assert capsys.readouterr().err == "(f pid=1) work: 0/3 it\n(f pid=1) work: 3/3 it\n"
