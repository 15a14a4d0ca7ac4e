"""The node as a Fargate task runs it: configured from the task's environment.

    python -m starburst.node.entrypoint

| variable | meaning | default |
| --- | --- | --- |
| ``STARBURST_STORE`` | object store URL (``s3://bucket/prefix``) | required |
| ``STARBURST_NODE_PORT`` | port the head dials | 47000 |
| ``STARBURST_LEASE_S`` | seconds without a head before the node exits (at start, and after losing it) | 180 |
| ``STARBURST_CLUSTER_ID`` | the cluster it belongs to (node id prefix) | ``starburst`` |
| ``STARBURST_NODE_CPUS`` | executors to run | CPUs the container sees |
| ``STARBURST_ADVERTISE`` | name shown in task output | ``$HOSTNAME`` |
| ``STARBURST_DRAIN_S`` | on SIGTERM (Spot interruption), time running tasks get | 110 |
| ``STARBURST_HOST`` | address to listen on | 0.0.0.0 |

No AWS credentials are passed in: the task role grants the bucket prefix.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping


def node_argv(env: Mapping[str, str]) -> list[str]:
    """The ``python -m starburst.node`` arguments for this environment; ValueError if incomplete."""
    store = env.get("STARBURST_STORE", "")
    if not store:
        raise ValueError("STARBURST_STORE must be set to the object store URL (e.g. s3://bucket/prefix)")
    lease = env.get("STARBURST_LEASE_S", "180")
    host = env.get("HOSTNAME") or socket.gethostname()
    argv = [
        "--host", env.get("STARBURST_HOST", "0.0.0.0"),
        "--port", env.get("STARBURST_NODE_PORT", "47000"),
        "--store", store,
        "--lease", lease,
        "--reconnect-lease", lease,
        "--drain-timeout", env.get("STARBURST_DRAIN_S", "110"),
        "--node-id", f"{env.get('STARBURST_CLUSTER_ID', 'starburst')}-{host}",
        "--advertise", env.get("STARBURST_ADVERTISE", host),
    ]
    if env.get("STARBURST_NODE_CPUS"):
        argv += ["--num-cpus", env["STARBURST_NODE_CPUS"]]
    return argv


def main() -> None:
    from .launch import parse_args, prepare

    args = parse_args(node_argv(os.environ))
    early = prepare(args)

    from .server import run

    run(args, early)


if __name__ == "__main__":
    main()
