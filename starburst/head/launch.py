"""The head's first steps, before its heavy imports: arguments, the store directory, and the
local node process (started now so that its start-up overlaps the head's).

Only light standard-library imports here: ``python -m starburst.head`` runs this first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid

from .. import config


def default_cpus() -> float:
    return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m starburst.head", description="Run a starburst head.")
    parser.add_argument("--listen", default="",
                        help="also accept drivers on TCP HOST:PORT (with the head's token); by default the head "
                             "listens only on a Unix socket in the owner's 0700 runtime directory")
    parser.add_argument("--num-cpus", type=float, default=None)
    parser.add_argument("--cluster-id", default="")
    parser.add_argument("--exit-when-unused", action="store_true",
                        help="exit when the last driver disconnects (heads started by init())")
    parser.add_argument("--provider", choices=("local", "fargate"), default="local",
                        help="where nodes come from: a node process on this machine, or Fargate tasks")
    parser.add_argument("--cluster-config", default="",
                        help="JSON file with the Fargate cluster's options (written by init() / 'starburst up')")
    parser.add_argument("--confirm-start", action="store_true",
                        help="after printing the address, wait for 'ok' on stdin; stop if the starter is gone")
    args = parser.parse_args(argv)
    if args.num_cpus is None:
        args.num_cpus = default_cpus()
    args.cluster_id = args.cluster_id or uuid.uuid4().hex[:12]
    return args


def spawn_local_node(node_id: str, num_cpus: float, store_dir: str, log_path: str, runtime_dir: str,
                     token: str, store_url: str = "") -> subprocess.Popen:
    """Start a node on this machine; it prints its address (a Unix socket in ``runtime_dir``, a
    0700 directory) on its stdout when it listens, and serves only a caller presenting ``token``
    (handed over in its environment: only this user can read a process's environment).
    ``store_url``: the cluster's store when it is not ``store_dir`` (a hybrid cluster's S3 store;
    ``store_dir`` is then only the node's scratch directory)."""
    with config.open_log(log_path) as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "starburst.node", "--node-id", node_id, "--num-cpus", str(num_cpus),
             "--store", store_url or "file://" + store_dir, "--parent-pid", str(os.getpid()),
             "--runtime-dir", runtime_dir, "--cleanup-dir", store_dir],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file,
            env=dict(os.environ, STARBURST_NODE_TOKEN=token),
        )
