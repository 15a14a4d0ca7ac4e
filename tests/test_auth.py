"""The token check in front of every gRPC service (``_auth.server_interceptor``), on a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading

import grpc
import pytest

from starburst import _auth
from starburst._proto import starburst_pb2 as pb
from starburst._proto import starburst_pb2_grpc as pb_grpc


class _Head(pb_grpc.HeadServicer):
    async def Session(self, request_iterator, context):  # noqa: N802 - gRPC method name
        async for _ in request_iterator:
            yield pb.HeadMsg(ops=[pb.HeadOp(welcome=pb.Welcome(job_id="job-1"))])


@pytest.fixture
def head_address():
    directory = tempfile.mkdtemp(prefix="sb-auth-", dir="/tmp")  # short: socket paths are bounded
    address = f"unix:{os.path.join(directory, 'head.sock')}"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        server = grpc.aio.server(interceptors=[_auth.server_interceptor("right")])
        pb_grpc.add_HeadServicer_to_server(_Head(), server)
        server.add_insecure_port(address)
        await server.start()
        started.set()
        await stop.wait()
        await server.stop(grace=0)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield address
    finally:
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(30)
        shutil.rmtree(directory, ignore_errors=True)


def _session(address: str, token: str) -> grpc.StatusCode | None:
    """Open a session with ``token`` as a driver does (grpc.aio, the hello written at once, then
    read); None if welcomed, else the code it was refused with."""

    async def run() -> grpc.StatusCode | None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.HeadStub(channel).Session(metadata=_auth.call_metadata(token), timeout=30)
            try:
                await call.write(pb.ClientMsg(ops=[pb.ClientOp(hello=pb.Hello(kind="driver", pid=os.getpid()))]))
                await call.read()
                return None
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    return asyncio.run(run())


def test_a_wrong_token_is_refused_as_unauthenticated_every_time(head_address):
    """Refused while its hello was still being written, a caller's gRPC used to report "INTERNAL:
    Internal error from Core" (5 times in 30 here), not why it was refused."""
    assert _session(head_address, "right") is None  # welcomed
    codes = [_session(head_address, "wrong") for _ in range(30)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 30, codes
