"""The rehearsal harness itself (tests/rehearsal/): the latency proxy, and the fake ECS agent running
real node processes for the tasks that starburst's FargateLauncher starts in a moto server.

Nothing of starburst is mocked: the launcher calls moto, the agent runs
``python -m starburst.node.entrypoint``, and addresses come from the launcher's default resolver.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import struct
import threading
import time

import grpc
import pytest
from rehearsal.agent import EXITED_REASON, FakeEcsAgent, tasks_stay_running
from rehearsal.latency_proxy import LatencyProxy

from starburst.aws import provision
from starburst.aws.launcher import FargateLauncher
from starburst.aws.settings import Settings

pytestmark = pytest.mark.slow  # moto/SeaweedFS servers and real processes: the full tier only

HEAD = "203.0.113.5"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst:py311-rehearsal"


# -- the latency proxy -----------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        # end of stream from the client: close (the proxy must pass this on)


@pytest.fixture
def echo_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server):
    host, port = echo_server
    with LatencyProxy("127.0.0.1", 0, host, port, rtt_ms=40) as p:
        yield p


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        assert chunk, f"connection closed after {got} of {n} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def test_proxy_adds_the_round_trip_and_counts_bytes(proxy):
    assert proxy.port != 0 and proxy.delay_s == pytest.approx(0.02)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for _ in range(3):
            started = time.monotonic()
            sock.sendall(b"ping")
            assert _recv_exactly(sock, 4) == b"ping"
            elapsed = time.monotonic() - started
            assert 0.040 <= elapsed < 1.0, elapsed
    deadline = time.monotonic() + 2
    while proxy.bytes_down < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (proxy.bytes_up, proxy.bytes_down, proxy.connections) == (12, 12, 1)


def test_proxy_pipelines_a_stream_of_chunks(proxy):
    """200 chunks sent 2 ms apart arrive back in about the sending time plus one round trip; a
    proxy that slept per chunk would need 200 x 40 ms."""
    n, size = 200, 1000
    received = bytearray()

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        def read_all():
            while len(received) < n * size:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=read_all)
        started = time.monotonic()
        reader.start()
        for i in range(n):
            sock.sendall(bytes([i % 256]) * size)
            time.sleep(0.002)
        reader.join(timeout=10)
        elapsed = time.monotonic() - started
    assert len(received) == n * size
    assert received == b"".join(bytes([i % 256]) * size for i in range(n))
    assert 0.04 <= elapsed < 2.0, elapsed
    assert proxy.bytes_up == proxy.bytes_down == n * size


def test_proxy_keeps_throughput_and_passes_on_end_of_stream(proxy):
    """32 MiB each way through a 40 ms proxy, intact and in seconds at most (about 0.3 s here: no
    per-chunk delay); the client's half close reaches the server, whose close comes back as end of
    stream."""
    payload = bytes(range(256)) * (32 * 4096)  # 32 MiB
    echoed = bytearray()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        def read_all():
            while chunk := sock.recv(1 << 20):
                echoed.extend(chunk)

        reader = threading.Thread(target=read_all)
        started = time.monotonic()
        reader.start()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reader.join(timeout=20)
        elapsed = time.monotonic() - started
    assert not reader.is_alive(), "the server's close never reached the client"
    assert len(echoed) == len(payload) and echoed == payload
    assert elapsed < 5.0, elapsed
    assert proxy.bytes_up == proxy.bytes_down == len(payload)


def test_a_reset_on_one_end_closes_the_other():
    with socket.create_server(("127.0.0.1", 0)) as server, \
            LatencyProxy("127.0.0.1", 0, *server.getsockname(), rtt_ms=10) as p:
        client = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            client.sendall(b"x")
            assert conn.recv(1) == b"x"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST, not FIN: the proxy can only abort the other side
            try:
                assert conn.recv(1) == b""
            except ConnectionResetError:
                pass


def test_proxy_without_a_target_closes_the_client_and_close_is_idempotent():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead_port = free.getsockname()[1]  # nothing listens there once this socket closes
    p = LatencyProxy("127.0.0.1", 0, "127.0.0.1", dead_port, rtt_ms=10).start()
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as sock:
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        p.close()
        p.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


# -- the fake ECS agent ----------------------------------------------------------------------------


@pytest.fixture
def fargate(aws):
    """A set-up moto account whose tasks stay RUNNING until stopped; yields (aws, settings)."""
    with tasks_stay_running(aws.endpoint):
        report = provision.setup(aws.session(), Settings(), head_ip=HEAD)
        yield aws, report.settings


def _launcher(aws, settings, cluster_id="starburst-rehearsal1"):
    return FargateLauncher(aws.session(), settings, cluster_id, IMAGE, size=(1024, 2048),
                           sleep=lambda s: None)


def _agent(aws, settings, tmp_path, **kwargs):
    node_env = {
        "STARBURST_STORE": f"file://{tmp_path / 'store'}",
        "STARBURST_INSECURE": "1",  # loopback only: no TLS bundle in this harness test
        "STARBURST_DRAIN_S": "5",
    }
    return FakeEcsAgent(aws.endpoint, aws.region, settings.ecs_cluster, node_env,
                        tmp_path / "logs", **kwargs)


def _task(aws, settings, arn):
    (task,) = aws.client("ecs").describe_tasks(cluster=settings.ecs_cluster, tasks=[arn])["tasks"]
    return task


def _loopback_n(ip: str) -> int:
    """N of 127.0.0.N (the agent hands these out from 2; an address another test session's agent
    holds is skipped)."""
    prefix, _, n = ip.rpartition(".")
    assert prefix == "127.0.0", ip
    return int(n)


def _grpc_ready(address: str, timeout: float = 10.0) -> None:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


def test_agent_runs_a_node_the_launcher_finds_and_stop_task_drains_it(fargate, tmp_path):
    aws, settings = fargate
    launcher = _launcher(aws, settings)
    with _agent(aws, settings, tmp_path) as agent:
        (arn,) = launcher.launch(1)
        (record,) = agent.wait_for_nodes(1, timeout=30)
        assert record.task_arn == arn and agent.started_count == 1 and agent.alive() == [arn]

        # The unchanged default resolver finds the agent's Elastic IP on the task's ENI.
        assert launcher.addresses([arn]) == {arn: record.address}
        assert _loopback_n(record.ip) >= 2 and record.port == settings.node_port
        host, port = record.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        _grpc_ready(record.address)

        # The node's environment: the task definition's, the launcher's overrides, the platform's.
        assert record.env["STARBURST_CLUSTER_ID"] == "starburst-rehearsal1"
        assert record.env["STARBURST_NODE_PORT"] == str(settings.node_port)
        assert record.env["STARBURST_HOST"] == record.ip
        assert record.env["HOSTNAME"] == arn.rsplit("/", 1)[-1]
        assert record.env["STARBURST_STORE"].startswith("file://")

        # StopTask: the node gets SIGTERM, drains and exits by itself (no SIGKILL needed).
        launcher.stop([arn], reason="scaled down")
        assert agent.wait_exited(arn, timeout=15) == 0
        assert record.term_sent_at is not None and not record.killed_after_grace
        assert record.stopped_reason == "scaled down" and not record.stopped_by_agent
        assert "draining" in record.log_text()
        assert launcher.addresses([arn]) == {}
        eni = aws.client("ec2").describe_network_interfaces(
            NetworkInterfaceIds=[record.eni_id])["NetworkInterfaces"][0]
        assert "Association" not in eni  # the stopped task's public IP is released
    assert agent.errors == []


def test_a_node_that_dies_stops_its_task_and_close_kills_the_rest(fargate, tmp_path):
    aws, settings = fargate
    launcher = _launcher(aws, settings)
    agent = _agent(aws, settings, tmp_path).start()
    try:
        arns = launcher.launch(2)
        records = agent.wait_for_nodes(2, timeout=30)
        assert len({_loopback_n(r.ip) for r in records}) == 2
        assert launcher.addresses(arns) == {r.task_arn: r.address for r in records}

        victim, survivor = arns
        agent.kill(victim, signal.SIGKILL)
        assert agent.wait_exited(victim, timeout=15) == -signal.SIGKILL
        task = _task(aws, settings, victim)
        assert (task["desiredStatus"], task["lastStatus"]) == ("STOPPED", "STOPPED")
        assert task["stoppedReason"] == EXITED_REASON
        assert agent.nodes[victim].stopped_by_agent
        assert agent.alive() == [survivor]
        assert _task(aws, settings, survivor)["desiredStatus"] == "RUNNING"
        assert set(launcher.addresses(arns)) == {survivor}
    finally:
        agent.close()
        agent.close()
    assert agent.alive() == []
    assert agent.wait_all_exited(timeout=1)[survivor] == -signal.SIGKILL
    assert agent.errors == []


def test_a_node_that_ignores_sigterm_is_killed_after_the_grace_period(fargate, tmp_path):
    aws, settings = fargate
    launcher = _launcher(aws, settings)
    with _agent(aws, settings, tmp_path, stop_grace_s=1.0) as agent:
        (arn,) = launcher.launch(1)
        agent.wait_for_nodes(1, timeout=30)
        agent.kill(arn, signal.SIGSTOP)  # a stopped process can't act on SIGTERM
        launcher.stop([arn])
        started = time.monotonic()
        assert agent.wait_exited(arn, timeout=15) == -signal.SIGKILL
        assert time.monotonic() - started >= 0.9
        record = agent.nodes[arn]
        assert record.term_sent_at is not None and record.killed_after_grace


def test_with_latency_the_head_reaches_the_node_through_a_proxy(fargate, tmp_path):
    aws, settings = fargate
    launcher = _launcher(aws, settings)
    with _agent(aws, settings, tmp_path, latency_ms=40) as agent:
        (arn,) = launcher.launch(1)
        (record,) = agent.wait_for_nodes(1, timeout=30)
        assert record.proxy is not None and record.listen_host != record.ip
        assert record.env["STARBURST_HOST"] == record.listen_host
        assert launcher.addresses([arn]) == {arn: record.address} == {arn: record.proxy.address}

        host, port = record.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        started = time.monotonic()
        _grpc_ready(record.address)
        assert time.monotonic() - started >= 0.04  # at least one round trip through the proxy
        assert record.proxy.bytes_up > 0 and record.proxy.bytes_down > 0

        launcher.stop([arn])
        assert agent.wait_exited(arn, timeout=15) == 0
        with pytest.raises(OSError):  # the proxy went with the node
            socket.create_connection((host, int(port)), timeout=1).close()
    assert agent.errors == []
