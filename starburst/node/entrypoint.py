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
| ``STARBURST_TLS_BUNDLE`` | S3 URI of the node's TLS bundle (certificate, key, cluster CA) | required |
| ``STARBURST_TLS_BUNDLE_SHA256`` | the bundle's SHA-256: the node trusts only that exact bundle | required |
| ``STARBURST_INSECURE`` | ``1``: serve without TLS (tests on loopback only) | unset |

No AWS credentials and no secret are passed in: the task role grants the bucket prefix, where the
head put the TLS bundle (see ``starburst.tls``).
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


def fetch_s3(uri: str) -> bytes:
    """The bytes of ``s3://bucket/key``, read with the task role's credentials."""
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()


def tls_identity(env: Mapping[str, str], fetch=fetch_s3):
    """The node's TLS identity from its bundle; None only when ``STARBURST_INSECURE=1``."""
    from .. import tls

    if tls.ENV_BUNDLE not in env:
        if env.get("STARBURST_INSECURE") == "1":
            return None
        raise ValueError(f"{tls.ENV_BUNDLE} is not set: a node on a public address serves only with TLS "
                         "(set STARBURST_INSECURE=1 to serve without, on a private network)")
    return tls.load_node_bundle_from_env(env, fetch, cluster_id=env.get("STARBURST_CLUSTER_ID")).identity


def main() -> None:
    from .launch import parse_args, prepare

    args = parse_args(node_argv(os.environ))
    args.tls = tls_identity(os.environ)
    early = prepare(args)

    from .. import config

    config.import_grpc_for_streams()  # before anything imports gRPC
    from .server import run

    run(args, early)


if __name__ == "__main__":
    main()
