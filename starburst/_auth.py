"""Who may talk to a head or a local node: a secret token, checked on every call.

Local clusters listen on Unix sockets inside a 0700 directory (``config.runtime_dir``), so only the
owner's processes can even connect; the token is a second lock on the same door, and the only lock
on a head that also listens on TCP (``starburst up --listen HOST:PORT``, for drivers in containers).

Addresses drivers use:
- ``unix:/run/user/1000/starburst/<cluster>/head.sock``: the token is read from the ``token`` file
  (0600) next to the socket;
- ``TOKEN@HOST:PORT`` (what ``starburst up --listen`` prints), or ``HOST:PORT`` with the token in
  ``$STARBURST_TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import pathlib
import secrets
from typing import Any

from ._files import write_atomic

#: gRPC metadata key carrying the token.
METADATA_KEY = "starburst-token"
TOKEN_FILE = "token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_token(directory: pathlib.Path, token: str) -> None:
    """Write the token owner-only next to a cluster's sockets."""
    write_atomic(directory / TOKEN_FILE, [token.encode()])  # 0600 from the moment it exists


def parse_address(address: str) -> tuple[str, str]:
    """(gRPC target, token) for a head address a driver was given (see the module docstring).

    Raises ValueError with what to do when no token can be found."""
    address = address.removeprefix("starburst://").removeprefix("ray://")
    if address.startswith("unix:"):
        path = pathlib.Path(address[len("unix:"):])
        try:
            return address, (path.parent / TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise ValueError(f"no starburst head at {address}: {exc.strerror} ({path.parent / TOKEN_FILE}); "
                             "is the cluster still running?") from None
    token, at, target = address.rpartition("@")
    if not at:
        token = os.environ.get("STARBURST_TOKEN", "")
    if not token:
        raise ValueError(
            f"the head at {address} needs its token: give the address as TOKEN@{address} (printed by "
            "'starburst up --listen') or set STARBURST_TOKEN")
    return target, token


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((METADATA_KEY, token),)


#: How long a refused stream waits for its caller's first message before it is refused.
REFUSE_READ_S = 5.0


def server_interceptor(token: str) -> Any:
    """A grpc.aio server interceptor refusing (UNAUTHENTICATED) every call without ``token``."""
    import grpc

    expected = token.encode()

    async def refuse_stream(request_iterator: Any, context: Any) -> None:
        # The caller's first message (a driver's hello) is taken first: refused while it was still
        # writing it, its gRPC said "INTERNAL: Internal error from Core" (5 times in 30 here), not why.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(request_iterator.__anext__(), REFUSE_READ_S)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing starburst token")

    async def refuse_unary(request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing starburst token")

    class TokenCheck(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            given = ""
            for key, value in details.invocation_metadata or ():
                if key == METADATA_KEY:
                    given = value if isinstance(value, str) else value.decode()
            if hmac.compare_digest(given.encode(), expected):
                return await continuation(details)
            handler = await continuation(details)
            if handler is None:
                return None
            if handler.request_streaming and handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(refuse_stream)
            if handler.request_streaming:
                return grpc.stream_unary_rpc_method_handler(refuse_stream)
            if handler.response_streaming:
                return grpc.unary_stream_rpc_method_handler(refuse_unary)
            return grpc.unary_unary_rpc_method_handler(refuse_unary)

    return TokenCheck()
