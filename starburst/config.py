"""Where starburst keeps its files, and the defaults every process agrees on."""

from __future__ import annotations

import os
import pathlib
from typing import Any

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

#: The largest gRPC message any starburst process accepts: a session (or node link) that sends a
#: larger one is ended with RESOURCE_EXHAUSTED, and nobody else is affected. Writers split their
#: batches under MAX_BATCH_BYTES; only a single operation beyond it (say, a huge function) can come
#: near the limit, and the client refuses those with a clear error before sending.
MAX_MESSAGE_BYTES = int(os.environ.get("STARBURST_MAX_MESSAGE_BYTES", 256 << 20))
MAX_BATCH_BYTES = min(32 << 20, MAX_MESSAGE_BYTES // 4)

#: A driver calls the actors it created on this machine's node straight through their process's
#: socket (one crossing each way; the head keeps the books off the critical path). "0": every call
#: goes through the head.
DIRECT_CALLS = os.environ.get("STARBURST_DIRECT_CALLS", "1") != "0"


def split_batches(ops: list) -> list[list]:
    """``ops`` (protobuf messages) in consecutive groups of at most MAX_BATCH_BYTES encoded (an
    operation larger than that travels alone)."""
    if len(ops) <= 1:
        return [ops]
    groups: list[list] = []
    group: list = []
    size = 0
    for op in ops:
        n = op.ByteSize() + 6  # with its field tag and length prefix
        if group and size + n > MAX_BATCH_BYTES:
            groups.append(group)
            group, size = [], 0
        group.append(op)
        size += n
    groups.append(group)
    return groups


def batch_messages(message_type: Any, ops: list) -> list:
    """``message_type(ops=...)`` messages carrying ``ops`` in order, each under MAX_BATCH_BYTES when
    possible (one size computation when the whole batch fits, as it nearly always does)."""
    whole = message_type(ops=ops)
    if len(ops) <= 1 or whole.ByteSize() <= MAX_BATCH_BYTES:
        return [whole]
    return [message_type(ops=group) for group in split_batches(ops)]


#: gRPC messages carry batches of at most MAX_BATCH_BYTES (values above the inline threshold go to
#: the object store, never inside a message).
#: The same options serve channels and servers: servers must accept the clients' pings on idle
#: streams (gRPC's default answers a ping more often than every 5 minutes with GOAWAY
#: "too_many_pings", which would end an idle driver's session).
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S * 1000)),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S * 1000 / 2)),
    ("grpc.http2.max_ping_strikes", 0),
]

#: gRPC releases on which the head and its nodes import gRPC with these experiments switched off:
#: their streams are then read on the thread that polls gRPC's completion queue, and a message
#: reaches the event loop after one hand-over between threads instead of three (EventEngine's
#: poller, its worker pool, then that thread: seen with ``strace -f``). In a traced sync round trip
#: to a Fargate node the two gRPC reads took 0.30 and 0.32 ms instead of 0.44 and 0.49
#: (benchmarks/README.md, session 7). Other releases get gRPC's defaults.
GRPC_STREAM_EXPERIMENTS = {"1.85": "-event_engine_client,-event_engine_listener"}


def import_grpc_for_streams() -> bool:
    """Import gRPC, with GRPC_STREAM_EXPERIMENTS if this release is listed and the environment sets
    no GRPC_EXPERIMENTS of its own; True if they apply. The head and nodes call it before anything
    imports gRPC (gRPC reads the variable when it is imported). The variable is removed again, so
    that the processes they start (executors, users' code) get gRPC's defaults."""
    import sys

    flags = None
    if "grpc" not in sys.modules and "GRPC_EXPERIMENTS" not in os.environ:
        flags = GRPC_STREAM_EXPERIMENTS.get(_grpcio_release())
    if flags is not None:
        os.environ["GRPC_EXPERIMENTS"] = flags
    try:
        import grpc  # noqa: F401
    finally:
        if flags is not None:
            del os.environ["GRPC_EXPERIMENTS"]
    return flags is not None


def _grpcio_release() -> str:
    """The installed grpcio's "major.minor", read without importing gRPC: from the version file in
    its package (a few file reads; ``importlib.metadata`` scans every distribution on the path, ~6 ms
    of each head's and node's start), or from the distribution's metadata if that file is gone or
    unreadable or names no version."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("grpc")
    if spec is None or spec.origin is None:
        return ""
    try:
        with open(os.path.join(os.path.dirname(spec.origin), "_grpcio_metadata.py"), encoding="utf-8") as f:
            found = re.search(r"""__version__\s*=\s*['"]+(\d+\.\d+)""", f.read())
        if found:
            return found.group(1)
    except (OSError, ValueError):  # (ValueError: not UTF-8)
        pass
    import importlib.metadata

    try:
        return ".".join(importlib.metadata.version("grpcio").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return ""


#: A driver's session is lost when nothing has come from the head for this long (a paused, frozen
#: or vanished head): a driver that has heard nothing for a third of it pings the head (its event
#: loop answers), so get() and wait() raise SessionLostError about this long after the head stops.
HEAD_TIMEOUT_S = float(os.environ.get("STARBURST_HEAD_TIMEOUT_S", 10))


#: Longest Unix socket path every supported platform accepts (macOS: 104 bytes with the NUL).
SOCKET_PATH_MAX = 103
#: Longest socket name starburst puts under a cluster's runtime directory
#: (``<12 of the cluster id>/<node id>-<8 random>/executors.sock``, node ids up to 16 characters).
_SOCKET_TAIL_MAX = 12 + 1 + 16 + 9 + 1 + len("executors.sock")


class UnsafeDirectoryError(RuntimeError):
    """A directory starburst keeps private files in is not private (owner, mode or a symlink)."""


def private_dir(path: str | os.PathLike) -> pathlib.Path:
    """Create ``path`` (and missing parents) owner-only (0700) and check that it is ours: owned by
    this user, not a symlink, and not readable or writable by group or others. Raises
    :class:`UnsafeDirectoryError` otherwise (someone else may have created it first)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectoryError(f"{path} is not a directory (a symlink?); remove it and try again")
    if st.st_mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(f"{path} is a shared directory (like /tmp): starburst needs one of its own there")
    if st.st_uid != os.getuid():
        raise UnsafeDirectoryError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): someone else may be trying "
            "to intercept your cluster; remove it, or set STARBURST_RUNTIME_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: tighten (e.g. made by an older starburst or a loose umask)
    return path


def home() -> pathlib.Path:
    """The directory holding the running head's address file and logs (``$STARBURST_HOME``), 0700."""
    path = pathlib.Path(os.environ.get("STARBURST_HOME") or pathlib.Path.home() / ".starburst")
    return private_dir(path)


def head_file() -> pathlib.Path:
    return home() / "head.json"


def log_dir() -> pathlib.Path:
    return private_dir(home() / "logs")


#: In a local store's directory: the path of its spill directory on disk (written by the head that
#: makes the store, read by every process that opens it).
SPILL_FILE = ".spill"


def head_log() -> pathlib.Path:
    """The head's log: its messages and its local node's (``$STARBURST_HOME/logs/head.log``)."""
    return log_dir() / "head.log"


def open_log(path: str | os.PathLike):
    """Open a log file for appending, owner-only (0600) whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def runtime_dir() -> pathlib.Path:
    """A short per-user 0700 directory for the local cluster's Unix sockets.

    ``$STARBURST_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/starburst``, else
    ``/tmp/starburst-<uid>``: never under ``TMPDIR`` or ``STARBURST_HOME``, which may be long (macOS's
    ``TMPDIR`` is ~49 characters), because a socket path may have at most :data:`SOCKET_PATH_MAX`
    bytes. Raises ValueError naming the limit when no candidate is short enough."""
    candidates = []
    if os.environ.get("STARBURST_RUNTIME_DIR"):
        candidates.append(os.environ["STARBURST_RUNTIME_DIR"])
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg) and os.stat(xdg).st_uid == os.getuid():
            candidates.append(os.path.join(xdg, "starburst"))
        candidates.append(f"/tmp/starburst-{os.getuid()}")
    for candidate in candidates:
        if len(os.fsencode(candidate)) + 1 + _SOCKET_TAIL_MAX <= SOCKET_PATH_MAX:
            return private_dir(candidate)
    raise ValueError(
        f"no runtime directory short enough for Unix sockets: {candidates[0]!r} leaves too little of the "
        f"{SOCKET_PATH_MAX}-byte limit on socket paths (macOS: 104 bytes); set STARBURST_RUNTIME_DIR to a "
        f"directory of at most {SOCKET_PATH_MAX - 1 - _SOCKET_TAIL_MAX} characters")


def cluster_runtime_dir(cluster_id: str) -> pathlib.Path:
    """The 0700 directory of one local cluster's sockets (the head's, its nodes' and executors')."""
    return private_dir(runtime_dir() / cluster_id[-12:])


def spill_root() -> pathlib.Path:
    """Disk directory for objects beyond the memory-backed store's cap (the temp directory)."""
    import tempfile

    return pathlib.Path(tempfile.gettempdir())


def shm_root() -> pathlib.Path:
    """Memory-backed directory for the local object store (``/dev/shm`` on Linux), else the temp
    directory (macOS). ``$STARBURST_SHM_DIR`` overrides it (tests simulate a machine without
    ``/dev/shm`` with it)."""
    override = os.environ.get("STARBURST_SHM_DIR")
    if override is not None:
        if override and os.path.isdir(override) and os.access(override, os.W_OK):
            return pathlib.Path(override)
    else:
        shm = pathlib.Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            return shm
    import tempfile

    return pathlib.Path(tempfile.gettempdir())
