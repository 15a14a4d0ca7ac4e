"""The local head's link to its node: framed protobuf over a Unix socket in the node's owner-only
directory, served only to a caller whose first frame is the node's token (a real node process)."""

from __future__ import annotations

import os
import socket

import pytest

from starburst._proto import starburst_pb2 as pb
from starburst.head.launch import spawn_local_node
from starburst.head.providers import LocalProvider
from starburst.framing import LINK_SOCKET, recv_frame

TOKEN = "t0ken-for-this-node-only"


@pytest.fixture
def node(tmp_path):
    import shutil
    import uuid

    from starburst import config

    runtime = config.cluster_runtime_dir(uuid.uuid4().hex)  # short: socket paths are bounded
    store = tmp_path / "store"
    store.mkdir()
    proc = spawn_local_node("local-link", 1, str(store), str(tmp_path / "node.log"), str(runtime), TOKEN)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().decode().strip()
        assert address.startswith("unix:"), (address, (tmp_path / "node.log").read_text()[-2000:])
        yield address
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(runtime, ignore_errors=True)


def _link(address: str) -> socket.socket:
    path = os.path.join(os.path.dirname(address[len("unix:"):]), LINK_SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(4, "little") + data)


def test_the_link_says_hello_to_a_caller_with_the_token(node):
    sock = _link(node)
    try:
        _send_frame(sock, TOKEN.encode())
        frame = recv_frame(sock)
        assert frame is not None, "the node closed the link"
        msg = pb.NodeToHead()
        msg.ParseFromString(frame)
        assert msg.ops[0].WhichOneof("op") == "hello" and msg.ops[0].hello.node_id == "local-link"
    finally:
        sock.close()


@pytest.mark.parametrize("token", [b"", b"wrong", TOKEN.encode()[:-1] + b"X"])
def test_the_link_refuses_a_caller_without_the_token(node, token):
    sock = _link(node)
    try:
        _send_frame(sock, token)
        assert recv_frame(sock) is None  # closed without a word
    finally:
        sock.close()
    # ...and it still serves the head that has it.
    test_the_link_says_hello_to_a_caller_with_the_token(node)


def test_the_local_provider_links_by_the_framed_socket(monkeypatch):
    provider = LocalProvider(1, "/tmp/unused", "c1", None, TOKEN)
    assert provider.framed_link("unix:/run/x/local-0-abc/node.sock") == (f"/run/x/local-0-abc/{LINK_SOCKET}", TOKEN)
    monkeypatch.setenv("STARBURST_NODE_LINK", "grpc")  # the gRPC link, for comparisons
    assert provider.framed_link("unix:/run/x/local-0-abc/node.sock") is None



def test_a_local_head_serves_sessions_on_its_framed_socket_only_with_the_token(cluster):
    """Drivers on this machine talk to the head by framed protobuf (``session.sock`` beside the
    head's gRPC socket); without the cluster's token the head answers only UNAUTHENTICATED (as its
    gRPC socket does) and closes the socket, and a driver reports that."""
    import json

    from starburst import config
    from starburst.framing import SESSION_SOCKET

    address = json.loads(config.head_file().read_text())["address"]
    runtime = os.path.dirname(address[len("unix:"):])
    token = open(os.path.join(runtime, "token")).read().strip()
    for sent, answered in ((b"nope", False), (token.encode(), True)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(os.path.join(runtime, SESSION_SOCKET))
        try:
            _send_frame(sock, sent)
            hello = pb.ClientMsg(ops=[pb.ClientOp(hello=pb.Hello(kind="driver", pid=os.getpid()))])
            _send_frame(sock, hello.SerializeToString())
            frame = recv_frame(sock)
            if not answered:
                assert frame is not None
                refused = pb.HeadMsg.FromString(frame)
                assert [op.WhichOneof("op") for op in refused.ops] == ["error"], refused
                assert "UNAUTHENTICATED" in refused.ops[0].error
                assert recv_frame(sock) is None  # and nothing more: the socket is closed
                continue
            assert frame is not None
            msg = pb.HeadMsg()
            msg.ParseFromString(frame)
            assert msg.ops[0].WhichOneof("op") == "welcome", msg
            _send_frame(sock, b"")  # a keepalive ping is answered with an empty frame
            assert recv_frame(sock) == b""
        finally:
            sock.close()
    assert cluster.get(cluster.remote(lambda: 7).remote(), timeout=60) == 7

    from starburst.driver.client import Client, GrpcTransport, HeadUnavailableError

    transport = GrpcTransport(address)
    transport._token = "not-" + token
    with pytest.raises(ConnectionError, match="UNAUTHENTICATED") as refused:
        Client(transport)
    assert not isinstance(refused.value, HeadUnavailableError)  # (init() would start another head)


def test_a_head_that_goes_while_the_node_greets_it_starts_the_lease_again(tmp_path):
    """gRPC cancels the node's Work coroutine at its first write once the head is gone. A head that
    died just as it dialled (the node greeting it) left the node serving nobody, its lease
    cancelled: a Fargate node that never exits (the rehearsal's lease test caught it under load)."""
    import asyncio

    from starburst.node.launch import Early, parse_args
    from starburst.node.server import NodeServer

    args = parse_args(["--store", f"file://{tmp_path}", "--num-cpus", "1", "--lease", "30",
                       "--reconnect-lease", "30"])

    class GoneHead:  # the stream's context, as grpc.aio leaves it once the client is gone
        async def write(self, message) -> None:
            raise asyncio.CancelledError

        async def read(self):
            raise asyncio.CancelledError

    async def scenario() -> None:
        server = NodeServer(args, Early(str(tmp_path), str(tmp_path / "executors.sock"), None))
        server._start_lease(30)  # as at the node's start
        with pytest.raises(asyncio.CancelledError):
            await server.Work(None, GoneHead())
        try:
            assert not server.head_connected, "the node still counts the dead head as its head"
            assert server.lease_timer is not None and not server.lease_timer.done(), "no lease runs"
        finally:
            if server.lease_timer is not None:
                server.lease_timer.cancel()

    asyncio.run(scenario())
