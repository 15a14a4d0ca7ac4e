"""End-to-end rehearsal of a Fargate cluster, offline: moto for the AWS APIs, SeaweedFS for S3, and
a fake ECS agent running the real node entry point for each task the head launches.

What is real: init(cluster="fargate") and its pre-flight, the head and its Fargate provider
(RunTask, DescribeTasks, ENI address lookup, StopTask against moto), the node entry point with the
TLS bundle fetched from S3, mutual TLS between head and nodes, the S3 object store (SeaweedFS), the
drivers' and nodes' reads and writes of it. What is simulated: AWS itself (moto), and Fargate
running a container (the agent starts a local process with the task's environment).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


import starburst
from conftest import wait_for

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # the full tier only

SMALL = dict(cpu=1, memory="2GB")


def _cluster_prefix(rehearsal, cluster_id: str) -> str:
    return f"{rehearsal.settings.object_prefix}/{cluster_id}/"


def _cluster_id() -> str:
    from starburst.driver import process

    return process.find_head().cluster_id


def test_map_over_1000_tasks_then_shutdown_stops_every_task(rehearsal, agent, capsys):
    starburst.init(cluster="fargate", workers=2, lease=30, **SMALL)
    try:
        cluster_id = _cluster_id()

        @starburst.remote
        def square(x):
            return x * x, os.environ.get("STARBURST_CLUSTER_ID")

        results = starburst.get([square.remote(i) for i in range(1000)], timeout=120)
        assert [r[0] for r in results] == [i * i for i in range(1000)]
        assert {r[1] for r in results} == {cluster_id}  # ran on the cluster's nodes, not locally
        assert len(agent.alive()) == 2
        # Nodes join as they come up: on a loaded machine 1,000 tiny tasks can finish on the first
        # before the second has joined.
        nodes = wait_for(lambda: starburst.nodes() if len(starburst.nodes()) == 2 else None, 30, "both nodes")
        assert len(nodes) == 2
        assert len(rehearsal.running_tasks(cluster_id)) == 2
        # The TLS bundle is in the cluster's prefix; only its location and hash are in the task.
        assert _cluster_prefix(rehearsal, cluster_id) + "tls/node-bundle.json" in rehearsal.s3_keys(
            _cluster_prefix(rehearsal, cluster_id))
        for record in agent.nodes.values():
            assert "STARBURST_TLS_BUNDLE_SHA256" in record.env
            assert not any("PRIVATE KEY" in v for v in record.env.values())
    finally:
        starburst.shutdown()
    assert rehearsal.running_tasks(cluster_id) == []
    assert agent.wait_all_exited(timeout=30)
    assert rehearsal.s3_keys(_cluster_prefix(rehearsal, cluster_id)) == []
    err = capsys.readouterr().err
    assert f"cluster {cluster_id} in us-east-1: ran" in err and "1,000 tasks run" in err, err
    assert "2 Fargate tasks" in err and "cost $0.0" in err, err  # the meter's bill: both nodes, their minute


def test_large_arrays_travel_through_s3_and_refs_go_node_to_node(rehearsal, tmp_path):
    # A proxy between head and nodes counts every byte of the gRPC streams.
    with rehearsal.agent(tmp_path / "nodes", latency_ms=1) as agent:
        try:
            starburst.init(cluster="fargate", workers=2, lease=30, cpu=1, memory="4GB")
            cluster_id = _cluster_id()
            prefix = _cluster_prefix(rehearsal, cluster_id)
            arr = np.arange(32 * 2**20, dtype=np.float64)  # 256 MiB
            ref = starburst.put(arr)
            assert prefix + ref.hex() in rehearsal.s3_keys(prefix)  # the driver wrote it to S3

            @starburst.remote
            def double(a):
                return a * 2  # a 256 MiB result: the node writes it to S3

            @starburst.remote
            def summarize(a):
                return float(a[::4096].sum()), a.nbytes

            doubled = double.remote(ref)
            total, nbytes = starburst.get(summarize.remote(doubled), timeout=120)
            assert nbytes == arr.nbytes and total == float((arr * 2)[::4096].sum())
            store = starburst._runtime.peek_client().store
            assert store._cache.capacity > arr.nbytes + 2**20  # it would be cached had it been read
            assert doubled.hex() not in store._cache  # went node to node: the driver never read it
            out = starburst.get(doubled, timeout=60)
            assert np.array_equal(out, arr * 2)
            moved = 2 * arr.nbytes
            through_grpc = sum(r.proxy.bytes_up + r.proxy.bytes_down for r in agent.nodes.values())
            assert through_grpc < moved / 100, f"{through_grpc} bytes crossed gRPC for {moved} moved"
            del ref, doubled, out
            # Nobody holds them: both arrays are deleted from S3 (the TLS bundle stays until shutdown).
            wait_for(lambda: rehearsal.s3_keys(prefix) == [prefix + "tls/node-bundle.json"], 20,
                      "the arrays to be deleted from S3")
        finally:
            starburst.shutdown()
        assert rehearsal.s3_keys(prefix) == []


def test_a_node_killed_mid_run_has_its_tasks_retried_and_is_replaced(rehearsal, agent):
    starburst.init(cluster="fargate", workers=2, lease=30, **SMALL)

    @starburst.remote(max_retries=5)
    def slow(i):
        time.sleep(0.3)
        return i, os.environ["HOSTNAME"]

    refs = [slow.remote(i) for i in range(30)]
    starburst.wait(refs, num_returns=4, timeout=60)
    victim = agent.alive()[0]
    agent.kill(victim, signal.SIGKILL)
    results = starburst.get(refs, timeout=120)
    assert [r[0] for r in results] == list(range(30))
    # workers=2 is also the minimum: the head launched a replacement for the lost node.
    wait_for(lambda: agent.started_count >= 3 and len(agent.alive()) == 2, 30, "a replacement node")
    cluster_id = _cluster_id()
    assert victim not in rehearsal.running_tasks(cluster_id)


def test_spot_interruption_drains_the_node_and_loses_nothing(rehearsal, agent):
    starburst.init(cluster="fargate", workers=2, lease=30, **SMALL)

    @starburst.remote(max_retries=0)  # nothing may be lost and retried: queued work is handed back
    def work(i):
        time.sleep(0.2)
        return i

    refs = [work.remote(i) for i in range(40)]
    starburst.wait(refs, num_returns=4, timeout=60)
    victim = agent.alive()[0]
    agent.kill(victim, signal.SIGTERM)  # how ECS announces a Spot interruption
    assert starburst.get(refs, timeout=120) == list(range(40))
    assert agent.wait_exited(victim, timeout=30) == 0  # drained and exited by itself


def test_nodes_exit_within_their_lease_when_the_head_disappears(rehearsal, agent):
    from starburst.driver import process

    starburst.init(cluster="fargate", workers=2, lease=3, **SMALL)
    assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=60) == 1
    head = process.find_head()
    os.kill(head.pid, signal.SIGKILL)  # the laptop's head is gone: nobody stops the tasks
    started = time.monotonic()
    codes = agent.wait_all_exited(timeout=30)
    assert len(codes) == 2 and set(codes.values()) == {0}  # left by themselves, not killed
    assert time.monotonic() - started < 3 + 10
    assert rehearsal.running_tasks(head.cluster_id) == []  # ECS sees the tasks stop with their nodes


def test_a_client_without_the_cluster_certificate_is_refused(rehearsal, agent):
    import grpc

    from starburst import tls
    from starburst._proto import starburst_pb2_grpc as pb_grpc

    starburst.init(cluster="fargate", workers=1, lease=30, **SMALL)
    cluster_id = _cluster_id()
    (record,) = agent.wait_for_nodes(1)
    address = record.address

    def call(channel):
        with channel:
            stream = pb_grpc.NodeStub(channel).Work(iter(()), timeout=5)
            return next(iter(stream))

    with pytest.raises(grpc.RpcError) as plain:
        call(grpc.insecure_channel(address))
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client that trusts the node (the cluster's CA certificate is public: it is in the bundle)
    # but presents a head certificate from another CA is refused by the node.
    import json

    s3 = rehearsal.s3.session().client("s3", endpoint_url=rehearsal.s3.endpoint)
    key = _cluster_prefix(rehearsal, cluster_id) + "tls/node-bundle.json"
    bundle = s3.get_object(Bucket=rehearsal.s3.bucket, Key=key)
    ours = json.loads(bundle["Body"].read())["ca_cert"].encode()
    other = tls.ClusterCA.create(cluster_id).issue_head()
    with pytest.raises(grpc.RpcError) as foreign:
        call(grpc.secure_channel(address, tls.channel_credentials(other.cert_pem, other.key_pem, ours),
                                 tls.channel_options(cluster_id)))
    assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE
    # The cluster still works for its own head.
    assert starburst.get(starburst.remote(lambda: "ok").remote(), timeout=60) == "ok"


def test_scales_up_on_backlog_and_down_when_idle(rehearsal, agent):
    starburst.init(cluster="fargate", workers=(0, 2), idle_timeout=2, lease=30, **SMALL)
    cluster_id = _cluster_id()
    time.sleep(1.5)
    assert rehearsal.running_tasks(cluster_id) == []  # min 0: nothing runs before there is work

    @starburst.remote
    def work(i):
        time.sleep(0.05)
        return i

    assert starburst.get([work.remote(i) for i in range(40)], timeout=120) == list(range(40))
    assert agent.started_count == 2  # the backlog asked for the maximum
    wait_for(lambda: rehearsal.running_tasks(cluster_id) == [], 30, "idle nodes to be stopped")
    agent.wait_all_exited(timeout=30)
    # Work after scaling to zero starts a node again.
    assert starburst.get(work.remote(7), timeout=60) == 7
    assert agent.started_count == 3


def test_status_shows_the_fargate_cluster_and_its_cost(rehearsal, agent):
    import json

    starburst.init(cluster="fargate", workers=2, lease=30, max_cost=5, **SMALL)
    assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=60) == 1
    wait_for(lambda: len(starburst.nodes()) == 2, 30, "both nodes")
    out = subprocess.run([sys.executable, "-m", "starburst.cli", "status", "--json"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    status = json.loads(out)
    cluster = status["cluster"]
    assert cluster["provider"] == "fargate" and cluster["cluster_id"] == _cluster_id()
    assert cluster["workers"] == [2, 2] and cluster["max_cost"] == 5
    assert 0 < cluster["cost_usd"] < 0.01 and cluster["cost_per_hour"] > 0
    assert len(status["nodes"]) == 2
    text = subprocess.run([sys.executable, "-m", "starburst.cli", "status"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert "cost so far $" in text and "of max_cost $5.00" in text


def test_max_cost_below_the_first_minute_launches_nothing(rehearsal, agent):
    with pytest.raises(RuntimeError, match="max_cost"):
        starburst.init(cluster="fargate", workers=2, max_cost=0.0001, **SMALL)
    assert rehearsal.running_tasks() == []
    assert agent.started_count == 0


def test_a_node_with_another_cloudpickle_is_refused_with_a_clear_error(rehearsal, tmp_path):
    fake = tmp_path / "fake-site"
    meta = fake / "cloudpickle-0.0.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: cloudpickle\nVersion: 0.0.1\n")
    with rehearsal.agent(tmp_path / "nodes") as agent:
        agent.node_env["PYTHONPATH"] = str(fake)
        try:
            starburst.init(cluster="fargate", workers=1, lease=30, **SMALL)
            # The task fails, or, if the cluster stopped before it was submitted, .remote() does.
            with pytest.raises(starburst.exceptions.RayError, match="cloudpickle: driver .*, node 0.0.1") as info:
                starburst.get(starburst.remote(lambda: 1).remote(), timeout=60)
            assert "starburst env --rebuild" in str(info.value)
        finally:
            starburst.shutdown()
        assert rehearsal.running_tasks() == []


def test_a_local_helper_module_travels_by_value(rehearsal, agent, tmp_path, monkeypatch):
    (tmp_path / "my_helpers.py").write_text("def shout(s):\n    return s.upper() + '!'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_helpers

    starburst.init(cluster="fargate", workers=1, lease=30, **SMALL)

    @starburst.remote
    def use(s):
        return my_helpers.shout(s)

    assert starburst.get(use.remote("hi"), timeout=60) == "HI!"


def test_pipelining_keeps_nodes_busy_across_a_40ms_link(rehearsal, tmp_path):
    with rehearsal.agent(tmp_path / "nodes", latency_ms=40):
        try:
            starburst.init(cluster="fargate", workers=2, lease=30, **SMALL)

            @starburst.remote
            def tick(i):
                start = time.time()
                time.sleep(0.005)
                return os.getpid(), start, time.time()

            starburst.get([tick.remote(i) for i in range(20)], timeout=60)  # warm up (learn durations)
            spans = starburst.get([tick.remote(i) for i in range(400)], timeout=120)
        finally:
            starburst.shutdown()
    gaps = []
    for pid in {s[0] for s in spans}:
        mine = sorted((s[1], s[2]) for s in spans if s[0] == pid)
        gaps += [b[0] - a[1] for a, b in zip(mine, mine[1:])]
    gaps.sort()
    # Without tasks queued ahead on the node, each next task would wait a full round trip (40 ms).
    assert gaps[len(gaps) // 2] < 0.020, f"median idle gap {gaps[len(gaps) // 2] * 1000:.1f} ms"


def test_reaching_max_cost_stops_the_cluster_with_a_clear_error(rehearsal, agent):
    from starburst.aws.pricing import BuiltinPriceSource, task_cost

    # Fargate bills the first minute at launch; this budget lasts about 66 s of one worker.
    budget = task_cost(66, 1, 2, BuiltinPriceSource().rates("us-east-1"))
    starburst.init(cluster="fargate", workers=1, lease=30, max_cost=budget, **SMALL)
    cluster_id = _cluster_id()

    @starburst.remote
    def forever():
        time.sleep(600)

    started = time.monotonic()
    with pytest.raises(starburst.exceptions.ClusterStoppedError, match=r"max_cost \$0\.\d+ reached"):
        starburst.get(forever.remote(), timeout=150)
    assert 50 < time.monotonic() - started < 120
    wait_for(lambda: rehearsal.running_tasks(cluster_id) == [], 30, "the tasks to be stopped")
    agent.wait_all_exited(timeout=30)
    # A new task is refused with what to do now: the cluster is gone, this max_cost can't be raised.
    with pytest.raises(starburst.exceptions.RaySystemError,
                       match=r"cluster is stopped.*starburst\.shutdown\(\), then init\(\) again "
                             r"with a higher max_cost"):
        starburst.get(starburst.remote(lambda: 1).remote(), timeout=10)


def test_a_dropped_stream_is_redialled_and_its_tasks_retried(rehearsal, tmp_path):
    with rehearsal.agent(tmp_path / "nodes", latency_ms=1) as agent:
        try:
            starburst.init(cluster="fargate", workers=1, lease=30, **SMALL)

            @starburst.remote(max_retries=3)
            def slow(i):
                time.sleep(0.5)
                return i

            refs = [slow.remote(i) for i in range(6)]
            starburst.wait(refs, num_returns=1, timeout=60)
            (record,) = agent.nodes.values()
            record.proxy.drop_connections()  # the network drops the head's stream to the node
            assert starburst.get(refs, timeout=120) == list(range(6))
            assert record.proxy.connections >= 2  # the head dialled the same node again
            assert agent.started_count == 1 and record.alive()
        finally:
            starburst.shutdown()


def test_working_dir_and_py_modules_are_shipped_through_s3(rehearsal, agent, tmp_path):
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "input.txt").write_text("from the laptop")
    (work / "helpers_wd.py").write_text("def where():\n    return 'working_dir helper'\n")
    lib = tmp_path / "libs" / "mylib_pm"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("VALUE = 'py_modules package'\n")
    (tmp_path / "libs" / "unrelated.txt").write_text("must not travel")
    (work / "big").mkdir()
    (work / "big" / "huge.bin").write_bytes(b"x" * 1000)

    starburst.init(cluster="fargate", workers=1, lease=30, **SMALL)
    cluster_id = _cluster_id()

    @starburst.remote(runtime_env={"working_dir": str(work), "py_modules": [str(lib)], "excludes": ["big/"]})
    def use():
        import helpers_wd
        import mylib_pm

        with open("data/input.txt") as f:
            text = f.read()
        return (text, helpers_wd.where(), mylib_pm.VALUE, os.getcwd(),
                sorted(os.listdir(os.path.dirname(mylib_pm.__path__[0]))), os.path.exists("big"))

    text, helper, value, cwd, beside, big = starburst.get(use.remote(), timeout=60)
    assert (text, helper, value, big) == ("from the laptop", "working_dir helper", "py_modules package", False)
    assert cwd != str(work)  # a copy on the node, not the laptop's directory
    assert beside == ["mylib_pm"]  # only the module travels, not its neighbours
    keys = rehearsal.s3_keys(_cluster_prefix(rehearsal, cluster_id))
    assert len([k for k in keys if k.rsplit("/", 1)[-1].startswith("pkg-")]) == 2


def test_cli_up_fargate_is_used_by_init_and_stopped_by_down(rehearsal, agent, capsys):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "starburst.cli", *args], capture_output=True, text=True,
                              timeout=120)

    up = cli("up", "--cluster", "fargate", "--workers", "1", "--cpu", "1", "--memory", "2GB", "--lease", "30")
    assert up.returncode == 0, up.stderr
    assert "Fargate cluster starburst-" in up.stdout and "about $" in up.stderr  # the estimate
    try:
        from starburst.driver import process

        cluster_id = process.find_head().cluster_id
        capsys.readouterr()
        starburst.init()  # finds the running cluster, and says so with what it costs
        said = [line for line in capsys.readouterr().err.splitlines() if "running Fargate cluster" in line]
        assert len(said) == 1 and said[0].startswith(f"starburst: using the running Fargate cluster {cluster_id} ($")
        assert "/hour now" in said[0]
        assert starburst.get(starburst.remote(lambda: os.environ["STARBURST_CLUSTER_ID"]).remote(),
                             timeout=60) == cluster_id
        starburst.shutdown()  # the driver leaves; a cluster from 'up' stays
        assert len(rehearsal.running_tasks(cluster_id)) == 1
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert f"cluster {cluster_id} in us-east-1: ran" in down.stdout and "1 Fargate task " in down.stdout
    assert rehearsal.running_tasks(cluster_id) == []
    bad = cli("up", "--cluster", "fargate", "--cpu", "3", "--memory", "8GB")
    assert bad.returncode == 2 and "nearest: 2 vCPU/8 GB or 4 vCPU/8 GB" in bad.stderr


def test_nodes_that_crash_at_start_stop_the_cluster_with_their_reason(rehearsal, tmp_path):
    broken = tmp_path / "broken-image"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text("raise SystemExit(3)\n")  # the container dies at once
    with rehearsal.agent(tmp_path / "nodes") as agent:
        agent.node_env["PYTHONPATH"] = str(broken)
        try:
            starburst.init(cluster="fargate", workers=2, lease=30, **SMALL)
            cluster_id = _cluster_id()
            with pytest.raises(starburst.exceptions.RayError,
                               match="every node stopped before joining the cluster: Essential container"):
                starburst.get(starburst.remote(lambda: 1).remote(), timeout=60)
        finally:
            starburst.shutdown()
        assert rehearsal.running_tasks(cluster_id) == []
        assert agent.started_count == 2  # no endless relaunching of a broken image


def test_spot_workers_use_the_fargate_spot_capacity_provider(rehearsal, agent):
    import boto3

    starburst.init(cluster="fargate", workers=1, spot=True, lease=30, **SMALL)
    cluster_id = _cluster_id()
    assert starburst.get(starburst.remote(lambda: 1).remote(), timeout=60) == 1
    ecs = boto3.client("ecs", region_name="us-east-1")
    (task,) = ecs.describe_tasks(cluster=rehearsal.settings.ecs_cluster,
                                 tasks=rehearsal.running_tasks(cluster_id))["tasks"]
    assert task["capacityProviderName"] == "FARGATE_SPOT"
    env = {e["name"]: e["value"] for e in task["overrides"]["containerOverrides"][0]["environment"]}
    assert env["STARBURST_SPOT"] == "1" and env["STARBURST_CLUSTER_ID"] == cluster_id


LAUNCH_SCRIPT = """
import sys, time
import starburst

starburst.init(cluster="fargate", workers=2, lease=30, max_cost=5, cpu=1, memory="2GB")
deadline = time.monotonic() + 90
while len(starburst.nodes()) < 2:
    assert time.monotonic() < deadline, "the nodes did not join"
    time.sleep(0.1)
print("JOINED", starburst.get(starburst.remote(lambda: 7).remote(), timeout=60), flush=True)
starburst.shutdown()
"""


def _run_driver(script: str, tmp_path, tty: bool) -> tuple[int, str]:
    """Run ``script`` as a driver (stdout and stderr on a pseudo-terminal, or piped); returns its exit
    code and everything it wrote."""
    import pty
    import select

    path = tmp_path / ("tty.py" if tty else "piped.py")
    path.write_text(script)
    env = dict(os.environ, STARBURST_LAUNCH_POLL_S="0.1", COLUMNS="160")
    env.pop("STARBURST_PROGRESS", None)
    if not tty:
        proc = subprocess.run([sys.executable, str(path)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=180, env=env)
        return proc.returncode, proc.stdout + proc.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(path)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=env)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120)
            assert ready, f"no output for 120 s: {out!r}"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                data = b""
            if not data:
                break
            out += data
        return proc.wait(60), out.decode(errors="replace")
    finally:
        proc.kill()
        os.close(master)


def test_a_live_line_follows_the_workers_launch_in_a_terminal_only(rehearsal, agent, tmp_path):
    code, out = _run_driver(LAUNCH_SCRIPT, tmp_path, tty=True)
    assert code == 0 and "JOINED 7" in out, out
    assert "Fargate workers: 2 requested" in out and "joined" in out, out
    line = out[out.index("Fargate workers: 2 requested"):].splitlines()[0]
    assert "/h | $" in line and "so far" in line and "of $5.00 left" in line, line
    agent.wait_all_exited(timeout=60)

    code, out = _run_driver(LAUNCH_SCRIPT, tmp_path, tty=False)
    assert code == 0 and "JOINED 7" in out, out
    assert "Fargate workers" not in out, out
