"""Where starburst keeps its files, and the defaults every process agrees on."""

from __future__ import annotations

import os
import pathlib

#: Serialized values at least this large go to the object store; smaller ones travel inline.
INLINE_THRESHOLD = int(os.environ.get("STARBURST_INLINE_THRESHOLD", 1 << 20))

#: When a stream has more results coming, a batch waits at least LINGER_S and is written at most
#: every WINDOW_S, so that a busy stream carries few large messages (each gRPC write costs ~0.2 ms
#: of CPU) while a lone result is never delayed.
LINGER_S = 0.001
WINDOW_S = 0.005


def batch_delay(last_write: float) -> float:
    """How long a sender with more results coming waits before its next write."""
    import time

    return max(LINGER_S, last_write + WINDOW_S - time.monotonic())


#: Seconds between keepalive pings on every stream: a dead peer (a laptop that slept, a node
#: that vanished) is noticed within about this plus the 10 s ping timeout.
KEEPALIVE_S = float(os.environ.get("STARBURST_KEEPALIVE_S", 20))

#: gRPC messages carry batches; allow large ones (values above the threshold never travel inline).
#: The same options serve channels and servers: servers must accept the clients' pings on idle
#: streams (gRPC's default answers a ping more often than every 5 minutes with GOAWAY
#: "too_many_pings", which would end an idle driver's session).
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S * 1000)),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S * 1000 / 2)),
    ("grpc.http2.max_ping_strikes", 0),
]


def home() -> pathlib.Path:
    """The directory holding the running head's address file and logs (``$STARBURST_HOME``)."""
    path = pathlib.Path(os.environ.get("STARBURST_HOME") or pathlib.Path.home() / ".starburst")
    path.mkdir(parents=True, exist_ok=True)
    return path


def head_file() -> pathlib.Path:
    return home() / "head.json"


def log_dir() -> pathlib.Path:
    path = home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shm_root() -> pathlib.Path:
    """Memory-backed directory for the local object store (``/dev/shm`` on Linux)."""
    shm = pathlib.Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    import tempfile

    return pathlib.Path(tempfile.gettempdir())
