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


@contextlib.contextmanager
def head_lock():
    """Serialize find-or-start between processes sharing one STARBURST_HOME."""
    with open(config.home() / "head.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_head() -> HeadInfo | None:
    """The running head recorded in STARBURST_HOME, or None (a stale record is removed)."""
    path = config.head_file()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid", 0))
    if pid and psutil.pid_exists(pid):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return HeadInfo(info["address"], pid, info.get("started_by", "up"), info.get("cluster_id", ""),
                                info.get("provider", "local"))
        except psutil.Error:
            pass
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def start_head(num_cpus: float | None, exit_when_unused: bool, port: int = 0, timeout: float = 60.0,
               cluster_config: str = "", cluster_id: str = "") -> HeadInfo:
    """Start a head in its own session (it survives Ctrl-C in the driver's terminal).

    ``cluster_config``: a Fargate cluster's options file (``aws.cluster.ClusterOptions``) and
    ``cluster_id`` its id; without them the head runs the embedded local cluster."""
    cmd = [sys.executable, "-m", "starburst.head", "--port", str(port), "--confirm-start"]
    if cluster_config:
        cmd += ["--provider", "fargate", "--cluster-config", cluster_config]
        timeout = max(timeout, 900.0)  # launching many nodes with capacity retries takes minutes
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if exit_when_unused:
        cmd.append("--exit-when-unused")
    log_path = config.log_dir() / "head.log"
    with open(log_path, "ab") as log_file:
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
    return HeadInfo(line, proc.pid, "init" if exit_when_unused else "up", cluster_id,
                    "fargate" if cluster_config else "local")


#: The stdin pipes of heads this process started with init() (see start_head).
_starter_pipes: list = []


def _warm_up_imports() -> None:
    import grpc  # noqa: F401

    from .. import client  # noqa: F401
    from .._proto import starburst_pb2_grpc  # noqa: F401


def stop_head(info: HeadInfo, timeout: float = 15.0) -> bool:
    """Ask a head to shut down and wait for its process to exit; True if it did."""
    import grpc

    from .._proto import starburst_pb2 as pb
    from .._proto import starburst_pb2_grpc as pb_grpc

    try:
        with grpc.insecure_channel(info.address) as channel:
            pb_grpc.HeadStub(channel).Shutdown(pb.ShutdownRequest(), timeout=5)
    except grpc.RpcError:
        pass
    return wait_exit(info.pid, timeout)


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return True
        except psutil.NoSuchProcess:
            return True
        try:
            proc.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
    return False
