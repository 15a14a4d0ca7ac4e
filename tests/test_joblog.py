"""Job logs after the fact: the head keeps each job's task output (bounded, rotated, pruned) and
``starburst logs`` prints it after the driver exited; a detached actor's later output is kept."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from starburst.head import joblog
from conftest import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_no_file_until_a_job_writes_and_then_owner_only(home):
    logs = joblog.JobLogs()
    assert not joblog.jobs_dir().exists()  # a head that ran nothing leaves no (empty) log
    logs.write("job-a", "out", "f", 12, "", "hello\nworld")
    logs.close()
    job_dir = joblog.jobs_dir() / "job-a"
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(joblog.jobs_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE((job_dir / joblog.OUTPUT).stat().st_mode) == 0o600
    records = list(joblog.read("job-a"))
    assert [(r["k"], r["task"], r["text"]) for r in records] == [("out", "f", "hello\nworld")]
    assert joblog.format_record(records[0]) == "(f pid=12) hello\n(f pid=12) world\n"


def test_a_job_log_is_rotated_and_bounded(home, monkeypatch):
    monkeypatch.setenv("STARBURST_JOB_LOG_BYTES", "2000")
    logs = joblog.JobLogs()
    for i in range(200):
        logs.write("job-b", "out", "f", 1, "", f"line {i:04d}")
    logs.close()
    job_dir = joblog.jobs_dir() / "job-b"
    sizes = [p.stat().st_size for p in job_dir.iterdir()]
    assert sorted(p.name for p in job_dir.iterdir()) == [joblog.ROTATED, joblog.OUTPUT]
    assert all(s <= 2000 + 200 for s in sizes), sizes
    texts = [r["text"] for r in joblog.read("job-b")]
    assert texts[-1] == "line 0199"
    assert texts == sorted(texts)  # oldest first, the rotated file before the current one
    assert "line 0000" not in texts  # what is older than two files is gone


def test_retention_keeps_recent_jobs_only(home, monkeypatch):
    monkeypatch.setenv("STARBURST_LOG_RETENTION_DAYS", "7")
    logs = joblog.JobLogs()
    now = time.time()
    ages = [0.1, 0.2, 8, 0.3, 0.4]
    for i in range(len(ages)):
        logs.write(f"job-{i}", "out", "f", 1, "", "x")
    logs.close()  # written out (records are buffered until a flush): now age them
    for i, age_days in enumerate(ages):
        path = joblog.jobs_dir() / f"job-{i}" / joblog.OUTPUT
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    monkeypatch.setenv("STARBURST_LOG_MAX_JOBS", "3")
    removed = joblog.prune(now)
    # job-2 is past 7 days; of the rest, the 3 most recent stay (job-4 is the oldest of those 4).
    assert sorted(removed) == ["job-2", "job-4"]
    assert [j for j, _ in joblog.list_jobs()] == ["job-0", "job-1", "job-3"]
    # A new job's first line applies the rule too.
    logs = joblog.JobLogs()
    logs.write("job-new", "out", "f", 1, "", "x")
    logs.close()
    assert len(joblog.list_jobs()) == 3 and joblog.list_jobs()[0][0] == "job-new"


def test_find_job_by_prefix_and_latest(home):
    logs = joblog.JobLogs()
    logs.write("job-abc1", "out", "f", 1, "", "x")
    logs.write("job-abd2", "out", "f", 1, "", "x")
    logs.close()
    assert joblog.find_job("job-abc") == "job-abc1"
    with pytest.raises(LookupError, match="give more"):
        joblog.find_job("job-ab")
    with pytest.raises(LookupError, match="no job 'zzz'"):
        joblog.find_job("zzz")


def _driver(home: pathlib.Path, source: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_logs_after_the_driver_exited_and_a_detached_actors_later_output(tmp_path):
    home = tmp_path / "home"
    flag = tmp_path / "go"
    assert cli(home, "up", "--num-cpus", "2").returncode == 0
    try:
        proc = _driver(home, f"""
            import os, threading, time
            import starburst

            ctx = starburst.init()

            @starburst.remote
            def work(i):
                print(f"hello from task {{i}}")
                return i

            @starburst.remote
            def broken():
                raise ValueError("this task fails on purpose")

            @starburst.remote
            class Ticker:
                def start(self, path):
                    def later():
                        while not os.path.exists(path):
                            time.sleep(0.05)
                        print("printed after the driver left", flush=True)
                    threading.Thread(target=later, daemon=True).start()
                    return True

            assert starburst.get([work.remote(i) for i in range(3)]) == [0, 1, 2]
            try:
                starburst.get(broken.remote())
            except ValueError:
                pass
            t = Ticker.options(name="ticker", lifetime="detached").remote()
            assert starburst.get(t.start.remote({str(flag)!r}))
            print("JOB", ctx["job_id"])
        """)
        job = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("JOB ")][0]
        out = cli(home, "logs", job)
        assert out.returncode == 0, out.stderr
        for i in range(3):
            assert f"hello from task {i}" in out.stdout
        assert "(work pid=" in out.stdout
        assert "ValueError: this task fails on purpose" in out.stdout
        # The latest job is the default; --task and --errors filter.
        assert cli(home, "logs").stdout == out.stdout
        only = cli(home, "logs", job, "--task", "work").stdout
        assert "hello from task 1" in only and "ValueError" not in only
        errors = cli(home, "logs", job, "--errors").stdout
        assert "ValueError: this task fails on purpose" in errors and "hello from task" not in errors
        # The driver has exited; the detached actor prints now, and that is kept in its job's log:
        # `logs --follow` shows it as it comes, and ends when the cluster stops.
        assert "printed after the driver left" not in out.stdout
        env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
        follow = subprocess.Popen([sys.executable, "-m", "starburst", "logs", job, "--follow"],
                                  stdout=subprocess.PIPE, text=True, env=env)
        try:
            first = follow.stdout.readline()
            assert "hello from task" in first  # what was already there comes first
            flag.touch()
            for line in follow.stdout:
                if "printed after the driver left" in line:
                    assert line.startswith("(Ticker pid=")
                    break
            else:
                raise AssertionError("logs --follow ended without the detached actor's later output")
            assert "printed after the driver left" in cli(home, "logs", job).stdout
            assert cli(home, "down").returncode == 0
            assert follow.wait(30) == 0
        finally:
            follow.kill()
    finally:
        cli(home, "down")


def test_logs_node_reads_a_fargate_nodes_cloudwatch_stream(aws, tmp_path):
    from starburst.aws.settings import Settings

    group = Settings(region=aws.region).log_group
    logs = aws.client("logs")
    logs.create_log_group(logGroupName=group)
    for task_id, lines in (("3f9a0c1d2e", ["node listening on :47000", "lost the head; waiting"]),
                           ("77b1aa0000", ["other node"])):
        stream = f"node/node/{task_id}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": int(time.time() * 1000) + i, "message": m} for i, m in enumerate(lines)])
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "starburst", "logs", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    out = cli("--node", "3f9a")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["node listening on :47000", "lost the head; waiting"]
    missing = cli("--node", "0000")
    assert missing.returncode == 1 and "3f9a0c1d2e" in missing.stderr and "77b1aa0000" in missing.stderr


@pytest.mark.slow
def test_a_run_leaves_no_empty_log_file(run_script, tmp_path):
    for _ in range(2):  # not one more file per init() either
        run_script("""
            import starburst
            starburst.init(num_cpus=1)

            @starburst.remote
            def speak():
                print("said something")

            starburst.get(speak.remote())
            starburst.shutdown()
        """)
    logs = tmp_path / "home" / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert [p for p in files if p.stat().st_size == 0] == []
    assert sorted(p.name for p in files) == [joblog.OUTPUT, joblog.OUTPUT]  # one job log per run
