"""Finding, starting and stopping a head process (used by ``init()`` and the CLI)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import subprocess
import sys
import time
from typing import Any
from dataclasses import dataclass

import psutil

from .. import config


@dataclass
class HeadInfo:
    address: str
    pid: int
    started_by: str
    cluster_id: str = ""
    provider: str = "local"
    #: ``TOKEN@HOST:PORT`` when the head also accepts drivers over TCP (``starburst up --listen``).
    listen: str = ""


@contextlib.contextmanager
def head_lock():
    """Serialize find-or-start between processes sharing one STARBURST_HOME."""
    fd = os.open(config.home() / "head.lock", os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_head() -> HeadInfo | None:
    """The running head recorded in STARBURST_HOME, or None (a stale record is removed).

    The record is trusted only when the head at its address answers with the record's cluster id
    (a pid alone may have been reused by another process since)."""
    path = config.head_file()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid", 0))
    head = HeadInfo(info.get("address", ""), pid, info.get("started_by", "up"), info.get("cluster_id", ""),
                    info.get("provider", "local"), info.get("listen", ""))
    alive = False
    if pid and psutil.pid_exists(pid):
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
    if alive and identify(head.address) == head.cluster_id:
        return head
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def identify(address: str, timeout: float = 5.0) -> str | None:
    """The cluster id of the head answering at ``address``, or None if none answers."""
    reply = head_status(address, timeout)
    return None if reply is None else reply.cluster_id


def drivers_attached(address: str, timeout: float = 5.0) -> int:
    """How many drivers the head at ``address`` serves (0 when it doesn't answer: it is going)."""
    reply = head_status(address, timeout)
    return 0 if reply is None else reply.sessions


def status_reply(address: str, timeout: float) -> Any:
    """The head's StatusReply, asked with its token; raises ValueError (no token to be found) or
    grpc.RpcError (the head doesn't answer)."""
    import grpc

    from .. import _auth
    from .._proto import starburst_pb2 as pb
    from .._proto import starburst_pb2_grpc as pb_grpc

    target, token = _auth.parse_address(address)
    with grpc.insecure_channel(target) as channel:
        return pb_grpc.HeadStub(channel).Status(pb.StatusRequest(), timeout=timeout,
                                                metadata=_auth.call_metadata(token))


def head_status(address: str, timeout: float) -> Any:
    """``status_reply``, or None when the head doesn't answer."""
    import grpc

    try:
        return status_reply(address, timeout)
    except (ValueError, grpc.RpcError):
        return None


def start_head(num_cpus: float | None, exit_when_unused: bool, listen: str = "", timeout: float = 60.0,
               cluster_config: str = "", cluster_id: str = "") -> HeadInfo:
    """Start a head in its own session (it survives Ctrl-C in the driver's terminal).

    ``listen``: ``HOST:PORT`` on which the head also accepts drivers over TCP (with its token);
    without it the head listens only on a Unix socket in the owner's runtime directory.
    ``cluster_config``: a Fargate cluster's options file (``aws.cluster.ClusterOptions``) and
    ``cluster_id`` its id; without them the head runs the embedded local cluster."""
    config.runtime_dir()  # a clear error here, before anything starts, if it can't be made safe
    cmd = [sys.executable, "-m", "starburst.head", "--confirm-start"]
    if listen:
        cmd += ["--listen", listen]
    if cluster_config:
        cmd += ["--provider", "fargate", "--cluster-config", cluster_config]
        timeout = max(timeout, 900.0)  # launching many nodes with capacity retries takes minutes
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if exit_when_unused:
        cmd.append("--exit-when-unused")
    log_path = config.head_log()
    _rotate_log(log_path)
    with config.open_log(log_path) as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        _warm_up_imports()  # overlaps with the head's start
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                # SIGTERM: a Fargate head stops whatever it had launched before it exits.
                proc.terminate()
                try:
                    proc.wait(180)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise RuntimeError(f"the starburst head did not start within {timeout:g} s; see {log_path}")
        line = proc.stdout.readline().decode().strip()
        if line and not line.startswith("error: ") and not exit_when_unused:
            # The handshake's last step ('starburst up'): we have the address. A starter killed
            # before this line leaves the head reading EOF instead, and it stops what it launched.
            proc.stdin.write(b"ok\n")
            proc.stdin.flush()
    except BaseException:
        # Interrupted (Ctrl-C, a signal turned into an exception) while the head starts: nobody will
        # use it. SIGTERM makes it stop whatever it launched, in its own session, and write its
        # report to the log; we return at once instead of waiting for that.
        with contextlib.suppress(OSError):
            proc.terminate()
        proc.stdout.close()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: the head stops even if the SIGTERM was missed
        raise
    proc.stdout.close()
    if exit_when_unused and line and not line.startswith("error: "):
        # init(): this process holds the head's stdin open for as long as it lives; when it dies
        # (even by SIGKILL, before its driver connected) the head reads EOF and, if no driver is
        # connected, stops.
        _starter_pipes.append(proc.stdin)
    else:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if not line:
        proc.wait()
        raise RuntimeError(f"the starburst head exited with {proc.returncode} at start; see {log_path}")
    if line.startswith("error: "):
        proc.wait()
        raise RuntimeError(f"the cluster could not start: {line[len('error: '):]} (details in {log_path})")
    remote = ""
    with contextlib.suppress(OSError, ValueError):
        remote = json.loads(config.head_file().read_text()).get("listen", "") if listen else ""
    return HeadInfo(line, proc.pid, "init" if exit_when_unused else "up", cluster_id,
                    "fargate" if cluster_config else "local", remote)


#: head.log (the head's and its local node's messages) is rotated past this size when a head starts.
HEAD_LOG_BYTES = 8 << 20


def _rotate_log(path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > HEAD_LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))


#: The stdin pipes of heads this process started with init() (see start_head).
_starter_pipes: list = []


def _warm_up_imports() -> None:
    import grpc  # noqa: F401

    from . import client  # noqa: F401
    from .._proto import starburst_pb2_grpc  # noqa: F401


def stop_head(info: HeadInfo, timeout: float = 15.0) -> bool:
    """Ask a head to shut down and wait for its process to exit; True if it did."""
    import grpc

    from .. import _auth
    from .._proto import starburst_pb2 as pb
    from .._proto import starburst_pb2_grpc as pb_grpc

    try:
        target, token = _auth.parse_address(info.address)
        with grpc.insecure_channel(target) as channel:
            pb_grpc.HeadStub(channel).Shutdown(pb.ShutdownRequest(), timeout=5, metadata=_auth.call_metadata(token))
    except (ValueError, grpc.RpcError):
        pass
    return wait_exit(info.pid, timeout)


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    while True:  # looks at least once, so timeout=0 asks "has it exited?"
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        try:
            proc.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
