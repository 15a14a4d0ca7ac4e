"""Starting a node's executors before the node's heavy imports, so that both start in parallel.

Only light standard-library imports here: ``python -m starburst.node`` runs this first.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m starburst.node", description="Run a starburst node.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--advertise", default="", help="name shown in task output (remote nodes)")
    parser.add_argument("--node-id", default="")
    parser.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1))
    parser.add_argument("--store", required=True, help="object store URL")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--lease", type=float, default=60.0, help="seconds to wait for a head before exiting")
    parser.add_argument("--runtime-dir", default="",
                        help="a 0700 directory for the executors' socket; a node given one listens only on a "
                             "Unix socket in it (a local node: no TCP listener)")
    parser.add_argument("--reconnect-lease", type=float, default=0.0,
                        help="after losing the head, seconds to wait for it to dial again (0: exit at "
                             "once, as local nodes do)")
    parser.add_argument("--drain-timeout", type=float, default=110.0,
                        help="on SIGTERM, seconds running tasks get to finish (Spot gives 120)")
    parser.add_argument("--cleanup-dir", default="",
                        help="remove this directory on exit if the head died (local nodes: the store)")
    args = parser.parse_args(argv)
    args.tls = None  # a tls.Identity to serve with (set by the Fargate entry point, never an argument)
    # The secret a local node's head must present (handed over in our environment by the head that
    # started us; taken out so that the executors, which run user code, don't inherit it).
    args.token = os.environ.pop("STARBURST_NODE_TOKEN", "")
    args.node_id = args.node_id or "node-" + uuid.uuid4().hex[:8]
    return args


@dataclass
class Early:
    """What was set up before the node's event loop existed."""

    socket_dir: str
    socket_path: str
    listener: socket.socket
    executors: list[tuple[int, subprocess.Popen]] = field(default_factory=list)


def pool_size(num_cpus: float) -> int:
    return max(1, int(-(-num_cpus // 1)))


def spawn_executor(executor_id: int, socket_path: str, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.store.startswith("s3://"):
        # One download per node: the executors share their S3 reads through files in here.
        env["STARBURST_CACHE_DIR"] = os.path.join(os.path.dirname(socket_path), "objects")
    return subprocess.Popen(
        [sys.executable, "-m", "starburst.node.executor", "--socket", socket_path, "--id", str(executor_id),
         "--store", args.store, "--node", args.advertise or ""],
        stdin=subprocess.DEVNULL, env=env,
    )


def prepare(args: argparse.Namespace) -> Early:
    """Listen on the executors' socket and start the pool, before importing grpc and friends."""
    from .. import config

    # Short whatever TMPDIR is (Unix socket paths are bounded): a Fargate node has no runtime
    # directory handed to it, so it uses the same per-user one as a local cluster.
    socket_dir = tempfile.mkdtemp(prefix=f"{args.node_id}-", dir=args.runtime_dir or str(config.runtime_dir()))
    socket_path = os.path.join(socket_dir, "executors.sock")
    os.mkdir(os.path.join(socket_dir, "objects"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(128)
    early = Early(socket_dir, socket_path, listener)
    for executor_id in range(pool_size(args.num_cpus)):
        early.executors.append((executor_id, spawn_executor(executor_id, socket_path, args)))
    return early
