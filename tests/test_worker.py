"""The Fargate entry point, run as a real process: configuration from the environment, the lease
when no head comes, and reconnecting within the lease after the head's stream drops."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import subprocess
import sys
import time

import grpc
import pytest

from starburst._proto import starburst_pb2 as pb
from starburst._proto import starburst_pb2_grpc as pb_grpc
from starburst.node.entrypoint import node_argv

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, lease: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, STARBURST_STORE=f"file://{tmp_path}", STARBURST_NODE_PORT=str(port),
               STARBURST_LEASE_S=str(lease), STARBURST_HOST="127.0.0.1", STARBURST_NODE_CPUS="1",
               STARBURST_CLUSTER_ID="sbtest", HOSTNAME="task-1", STARBURST_INSECURE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker" / "entrypoint.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline(), "the node did not start"
    return proc, port


async def hello(port: int) -> pb.NodeHello:
    """Dial the node as its head does, take its hello, and hang up."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.NodeStub(channel).Work()
        first = await call.read()
        call.cancel()
        return first.ops[0].hello


async def hello_when_free(port: int, timeout: float = 30) -> pb.NodeHello:
    """``hello``, again until the node has noticed that its previous head hung up (until then it
    refuses a second head with FAILED_PRECONDITION)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await hello(port)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_environment_to_node_arguments():
    argv = node_argv({"STARBURST_STORE": "s3://b/p", "STARBURST_LEASE_S": "90", "HOSTNAME": "ip-10-0-0-1",
                      "STARBURST_CLUSTER_ID": "starburst-abc", "STARBURST_NODE_CPUS": "4"})
    as_dict = dict(zip(argv[::2], argv[1::2]))
    assert as_dict["--store"] == "s3://b/p" and as_dict["--lease"] == "90" and as_dict["--reconnect-lease"] == "90"
    assert as_dict["--node-id"] == "starburst-abc-ip-10-0-0-1" and as_dict["--num-cpus"] == "4"
    assert as_dict["--port"] == "47000" and as_dict["--host"] == "0.0.0.0"
    with pytest.raises(ValueError, match="STARBURST_STORE"):
        node_argv({})


def test_node_exits_when_no_head_comes_within_its_lease(tmp_path):
    proc, _ = start(tmp_path, lease=1.5)
    started = time.monotonic()
    try:
        assert proc.wait(timeout=20) == 0
        assert 1.0 <= time.monotonic() - started < 10  # after its lease, not at once
    finally:
        proc.kill()


@pytest.mark.slow
def test_node_waits_for_its_head_to_reconnect_then_gives_up(tmp_path):
    proc, port = start(tmp_path, lease=6)
    try:
        first = asyncio.run(hello(port))
        assert first.node_id == "sbtest-task-1" and first.resources.cpus == 1.0
        time.sleep(3.0)  # half the lease: a timer left over from this first drop would fire 3 s later
        assert proc.poll() is None, "a dropped stream must not end the node before its lease"
        again = asyncio.run(hello_when_free(port))  # the head dials again within the lease
        assert again.node_id == first.node_id
        started = time.monotonic()
        assert proc.wait(timeout=60) == 0  # then nobody comes back: it leaves after the lease
        # A stale timer from the first drop would end it ~3 s after `started`; a fresh lease, >= 6 s.
        assert time.monotonic() - started >= 5.0
    finally:
        proc.kill()


def test_node_refuses_to_serve_without_its_tls_bundle(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STARBURST_")}
    env.update(STARBURST_STORE=f"file://{tmp_path}", STARBURST_NODE_PORT=str(free_port()),
               STARBURST_HOST="127.0.0.1")
    proc = subprocess.run([sys.executable, str(ROOT / "worker" / "entrypoint.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "STARBURST_TLS_BUNDLE is not set" in proc.stderr


def test_tls_identity_comes_from_the_bundle_checked_against_its_hash():
    """The node fetches its bundle from where the environment says and trusts it only if it hashes
    to the value in the environment (refusals over the wire: tests/test_rehearsal.py)."""
    from starburst import tls
    from starburst.node import entrypoint

    ca = tls.ClusterCA.create("sbtest")
    bundle = tls.make_node_bundle(ca.issue_node())
    env = tls.node_environment("s3://bucket/sbtest/tls/node-bundle.json", bundle)
    fetched = []
    identity = entrypoint.tls_identity({**env, "STARBURST_CLUSTER_ID": "sbtest"},
                                       fetch=lambda uri: fetched.append(uri) or bundle)
    assert fetched == ["s3://bucket/sbtest/tls/node-bundle.json"] and identity.cluster_id == "sbtest"
    with pytest.raises(tls.BundleIntegrityError):
        entrypoint.tls_identity({**env, "STARBURST_CLUSTER_ID": "sbtest"}, fetch=lambda uri: bundle + b" ")
