"""The process model end to end: heads, nodes and executors start, are reused, recover and stop
without leaving processes or files behind; the CLI drives them; the wire contract is current."""

from __future__ import annotations

import filecmp
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import cli, wait_gone

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tree(pid: int) -> list[int]:
    """The process and every descendant of it."""
    proc = psutil.Process(pid)
    return [pid] + [c.pid for c in proc.children(recursive=True)]


def _floor(requirement_prefix: str) -> tuple[int, ...]:
    """The lower bound pyproject.toml puts on a runtime dependency, as a version tuple."""
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(rf"{requirement_prefix}\b", d)]
    return tuple(int(x) for x in re.search(r">=([\d.]+)", spec).group(1).split("."))


def test_generated_code_demands_no_newer_runtime_than_pyproject_allows():
    """The committed gencode refuses to import under an older grpcio/protobuf than its generator's:
    pyproject's floors must be at least that, or a fresh install of the lowest allowed versions fails."""
    import re

    grpc_code = (ROOT / "starburst" / "_proto" / "starburst_pb2_grpc.py").read_text()
    needed_grpc = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code).group(1)
    assert _floor("grpcio") >= tuple(int(x) for x in needed_grpc.split(".")), needed_grpc
    pb_code = (ROOT / "starburst" / "_proto" / "starburst_pb2.py").read_text()
    needed_pb = re.search(r"Protobuf Python Version: ([\d.]+)", pb_code).group(1)
    assert _floor("protobuf") >= tuple(int(x) for x in needed_pb.split(".")), needed_pb


def test_generated_protobuf_code_is_current(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = tmp_path / "starburst" / "_proto"
    committed = ROOT / "starburst" / "_proto"
    for name in ("starburst_pb2.py", "starburst_pb2.pyi", "starburst_pb2_grpc.py"):
        assert filecmp.cmp(fresh / name, committed / name, shallow=False), (
            f"starburst/_proto/{name} is stale: run 'python protos/generate.py' and commit the result"
        )


@pytest.mark.slow
def test_shutdown_leaves_no_processes_and_no_files(run_script, tmp_path):
    proc = run_script(
        """
        import json, os, psutil
        import numpy as np
        import starburst

        starburst.init(num_cpus=2)

        @starburst.remote
        def big(n):
            return np.ones(n)

        ref = big.remote(1_000_000)               # 8 MB: lives in the object store
        held = starburst.put(np.zeros(500_000))   # 4 MB put
        assert starburst.get(ref).sum() == 1_000_000
        client = starburst._runtime.peek_client()
        head = [p for p in psutil.Process().children() if "starburst.head" in " ".join(p.cmdline())]
        assert len(head) == 1, head
        pids = [head[0].pid] + [c.pid for c in head[0].children(recursive=True)]
        store = client.store.directory
        assert len(os.listdir(store)) >= 2, os.listdir(store)
        starburst.shutdown()
        print(json.dumps({"pids": pids, "store": store}))
        """
    )
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(info["pids"]) >= 4, info  # head, node, 2 executors
    assert wait_gone(info["pids"], timeout=5) == []
    assert not os.path.exists(info["store"])
    assert not (tmp_path / "home" / "head.json").exists()


@pytest.mark.slow
def test_killed_driver_takes_its_cluster_down(tmp_path):
    """A driver killed with SIGKILL never runs shutdown(): the head it started notices and stops."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import os, sys, json, psutil, time, starburst\n"
        "starburst.init(num_cpus=1)\n"
        "starburst.get(starburst.remote(lambda: 1).remote())\n"
        "head = [p for p in psutil.Process().children() if 'starburst.head' in ' '.join(p.cmdline())][0]\n"
        "pids = [head.pid] + [c.pid for c in head.children(recursive=True)]\n"
        "print(json.dumps({'pids': pids, 'store': starburst._runtime.peek_client().store.directory}), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, STARBURST_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(driver.stdout.readline())
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        assert wait_gone(info["pids"], timeout=20) == []
        assert not os.path.exists(info["store"])
    finally:
        driver.kill()


@pytest.mark.slow
def test_killed_head_takes_nodes_and_executors_down(tmp_path):
    home = tmp_path / "home"
    assert cli(home, "up", "--num-cpus", "2").returncode == 0
    try:
        status = json.loads(cli(home, "status", "--json").stdout)
        head_pid = status["pid"]
        pids = tree(head_pid)
        assert len(pids) >= 4, pids
        store = status["store"].removeprefix("file://")
        sockets = pathlib.Path(json.loads((home / "head.json").read_text())["address"].removeprefix("unix:")).parent
        assert sockets.is_dir()
    except BaseException:
        cli(home, "down")  # not killed yet: don't leave the cluster running
        raise
    os.kill(head_pid, signal.SIGKILL)
    assert wait_gone(pids, timeout=20) == []
    assert not os.path.exists(store)
    assert not sockets.exists()  # the head's socket and token too
    assert cli(home, "status").returncode == 3  # the stale head record is recognised as such


@pytest.mark.slow
def test_cli_up_is_reused_by_init_and_stopped_by_down(tmp_path, run_script):
    home = tmp_path / "home"
    assert cli(home, "status").returncode == 3
    up = cli(home, "up", "--num-cpus", "2")
    assert up.returncode == 0, up.stderr
    try:
        again = cli(home, "up")
        assert again.returncode == 0 and "already running" in again.stdout
        before = json.loads(cli(home, "status", "--json").stdout)
        script = """
            import starburst
            ctx = starburst.init()
            print(ctx["address"])
            assert starburst.get([starburst.remote(lambda i: i * i).remote(i) for i in range(10)]) == [
                i * i for i in range(10)]
            starburst.shutdown()
        """
        out = run_script(script, env={"STARBURST_HOME": str(home)})
        assert out.stdout.strip() == before["address"]
        # A head started by 'up' outlives its drivers, with its warm executors.
        after = json.loads(cli(home, "status", "--json").stdout)
        assert after["pid"] == before["pid"]
        assert after["tasks_finished"] >= before["tasks_finished"] + 10
        assert after["drivers"] == 0
        refused = run_script(
            "import starburst\nstarburst.init(num_cpus=3)\n", env={"STARBURST_HOME": str(home)}, check=False
        )
        assert refused.returncode != 0 and "num_cpus must not be provided" in refused.stderr
        pids = tree(before["pid"])
    finally:
        down = cli(home, "down")
    assert down.returncode == 0, down.stderr
    assert wait_gone(pids, timeout=5) == []
    assert cli(home, "down").returncode == 3
    assert cli(home, "status").returncode == 3


def test_address_auto_without_a_cluster_says_how_to_start_one(run_script):
    proc = run_script("import starburst\nstarburst.init(address='auto')\n", check=False)
    assert proc.returncode != 0
    assert "starburst up" in proc.stderr


def test_killed_executor_is_replaced_and_its_task_retried(cluster, starburst_home):
    ray = cluster

    def executors() -> int:
        status = json.loads(cli(starburst_home, "status", "--json").stdout)
        return sum(n["executors"] for n in status["nodes"])

    @ray.remote(max_retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(die.remote(), timeout=60)
    deadline = time.monotonic() + 20
    while executors() != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert executors() == 2

    @ray.remote
    def pid():
        return os.getpid()

    pids = set(ray.get([pid.remote() for _ in range(20)], timeout=60))
    assert pids and all(psutil.pid_exists(p) for p in pids)


def test_cli_help_and_bad_usage(tmp_path):
    home = tmp_path / "home"
    out = cli(home, "--help")
    assert out.returncode == 0
    for command in ("up", "status", "down"):
        assert command in out.stdout
    assert cli(home, "frobnicate").returncode == 2
    assert cli(home).returncode == 2


@pytest.mark.slow
def test_cli_run_executes_an_unmodified_ray_script(tmp_path):
    script = tmp_path / "ray_script.py"
    script.write_text(
        "import sys\n"
        "import ray\n"
        "from ray.util import ActorPool\n"
        "ray.init(num_cpus=2)\n"
        "@ray.remote\n"
        "class Doubler:\n"
        "    def double(self, x):\n"
        "        import ray  # resolved in the worker too\n"
        "        return 2 * x\n"
        "pool = ActorPool([Doubler.remote(), Doubler.remote()])\n"
        "print('result', sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(5))), sys.argv[1:])\n"
        "ray.shutdown()\n"
    )
    out = cli(tmp_path / "home", "run", str(script), "--flag", "x")
    assert out.returncode == 0, out.stderr
    assert "result [0, 2, 4, 6, 8] ['--flag', 'x']" in out.stdout


@pytest.mark.slow
def test_sigterm_drains_the_node_and_loses_nothing(tmp_path):
    """SIGTERM (ECS stop, Spot interruption): the node takes no more work, hands back what it had
    queued unrun, lets the running task finish, and exits; the head carries on with a new node."""
    home = tmp_path / "home"
    assert cli(home, "up", "--num-cpus", "1").returncode == 0
    try:
        script = tmp_path / "drain.py"
        script.write_text(
            "import json, os, subprocess, sys, time\n"
            "import starburst\n"
            "starburst.init()\n"
            "@starburst.remote(max_retries=0)\n"
            "def work(i, log, gate):\n"
            "    with open(log, 'a') as f:\n"
            "        f.write(f'{i}\\n')\n"
            "    deadline = time.monotonic() + 60\n"
            "    while i == 0 and not os.path.exists(gate) and time.monotonic() < deadline:\n"
            "        time.sleep(0.01)  # task 0 runs until the node has been told to drain\n"
            "    return i, os.getppid()\n"
            f"log, gate = {str(tmp_path / 'attempts.log')!r}, {str(tmp_path / 'gate')!r}\n"
            "refs = [work.remote(i, log, gate) for i in range(5)]\n"
            "deadline = time.monotonic() + 60\n"
            "while not (os.path.exists(log) and open(log).read().split()[:1] == ['0']):\n"
            "    assert time.monotonic() < deadline, 'task 0 never started'\n"
            "    time.sleep(0.01)\n"
            "status = json.loads(subprocess.run([sys.executable, '-m', 'starburst', 'status', '--json'],\n"
            "                                   capture_output=True, text=True).stdout)\n"
            "os.kill(status['nodes'][0]['pid'], 15)\n"
            "import glob\n"
            "logs = os.path.join(os.environ['STARBURST_HOME'], 'logs', '*.log')\n"
            "while not any('draining' in open(p).read() for p in glob.glob(logs)):  # the node heard it\n"
            "    assert time.monotonic() < deadline, 'the node never started draining'\n"
            "    time.sleep(0.01)\n"
            "open(gate, 'w').close()\n"
            "print(json.dumps({'results': starburst.get(refs, timeout=60), 'node': status['nodes'][0]['pid']}))\n"
        )
        env = dict(os.environ, STARBURST_HOME=str(home), PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout.strip().splitlines()[-1])
        assert [r[0] for r in info["results"]] == [0, 1, 2, 3, 4]
        # max_retries=0: every task ran exactly once (nothing charged a retry, nothing ran twice).
        assert sorted((tmp_path / "attempts.log").read_text().split()) == ["0", "1", "2", "3", "4"]
        assert info["results"][0][1] == info["node"]  # the running one finished on the draining node
        assert all(r[1] != info["node"] for r in info["results"][1:])  # the rest ran on its successor
        assert wait_gone([info["node"]], timeout=10) == []
    finally:
        cli(home, "down")


def test_up_on_a_port_it_cannot_take_says_so_and_leaves_nothing(tmp_path):
    """``starburst up --listen`` on a taken port: one clear error, and no socket directory, token or
    store left behind (the head used to raise out of its start with all three still there)."""
    import socket
    import tempfile

    runtime = pathlib.Path(tempfile.mkdtemp(prefix="sb-rt-", dir="/tmp"))  # short: socket paths
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli(tmp_path / "home", "up", "--num-cpus", "1", "--listen", f"127.0.0.1:{port}",
                  env={"STARBURST_RUNTIME_DIR": str(runtime)})
    try:
        assert out.returncode == 1, out.stderr
        assert f"could not listen on 127.0.0.1:{port}" in out.stderr
        assert list(runtime.iterdir()) == []
        assert not (tmp_path / "home" / "head.json").exists()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
