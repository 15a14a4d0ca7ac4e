"""Long-lived Fargate clusters: certificates renewed before they expire (after the first ones
expired, a node launched then gets a new bundle that a real mutual-TLS handshake with the head
accepts), and the vCPU quota read again while waves are queued.

The provider runs against moto (server mode, 127.0.0.1); certificates last seconds here (the
module's CERT_DAYS, a setting), so "past expiry" is real time passing, which BoringSSL checks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from concurrent import futures

import grpc
import pytest

from starburst import tls
from starburst._proto import starburst_pb2 as pb
from starburst._proto import starburst_pb2_grpc as pb_grpc
from starburst.aws import provider as provider_mod
from starburst.aws import provision
from starburst.aws.cluster import check_options
from starburst.aws.launcher import new_cluster_id
from starburst.aws.settings import Settings

#: Certificates are dated from 5 minutes back (clock skew): this leaves them 8 s of real life.
LIFETIME_S = 300 + 8.0


class _Status(pb_grpc.HeadServicer):
    def Status(self, request, context):  # noqa: N802 - gRPC's name
        return pb.StatusReply(head_version="node")


def _serve(identity: tls.Identity):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_HeadServicer_to_server(_Status(), server)
    port = server.add_secure_port("127.0.0.1:0", identity.server_credentials())
    server.start()
    return server, f"127.0.0.1:{port}"


def _handshake(provider, address: str) -> bool:
    """A real mutual-TLS call with the head's current credentials, as the head dials a node."""
    with grpc.secure_channel(address, provider._credentials,
                             options=tls.secure_channel_options(provider.cluster_id)) as channel:
        try:
            pb_grpc.HeadStub(channel).Status(pb.StatusRequest(), timeout=10)
            return True
        except grpc.RpcError:
            return False


def _node_bundle(aws, env: dict[str, str], cluster_id: str):
    """What a node does at start: fetch the bundle its environment names, check its hash."""
    s3 = aws.client("s3", "us-east-1")

    def fetch(uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    return tls.load_node_bundle_from_env(env, fetch, cluster_id=cluster_id)


def _expiry(pem: bytes) -> dt.datetime:
    return tls.certificate_expiry(pem)


@pytest.mark.slow
def test_certificates_are_renewed_and_a_node_launched_after_expiry_joins(aws, monkeypatch):
    monkeypatch.setattr(provider_mod, "CERT_DAYS", LIFETIME_S / 86400)
    settings = provision.setup(aws.session(), Settings(), head_ip="127.0.0.1").settings
    settings.save()
    options = check_options(workers=1, cpu=1, memory="2GB", image="example/worker:1", lease=60,
                            cluster_id=new_cluster_id(settings))
    options = dataclasses.replace(options, region="us-east-1")
    provider = provider_mod.FargateProvider(options, session=aws.session(), settings=settings)
    try:
        first_env = dict(provider.launcher.env)
        old = _node_bundle(aws, first_env, provider.cluster_id)
        server, address = _serve(old.identity)
        try:
            assert _handshake(provider, address)  # the premise: it works while valid
            deadline_cert = _expiry(provider.head_identity.cert_pem)
            # Wait for the event: the first certificates expire (real time: BoringSSL checks it).
            bound = time.monotonic() + 60
            while tls.now() <= deadline_cert and time.monotonic() < bound:
                time.sleep(0.05)
            assert not _handshake(provider, address)  # expired: nothing gets through any more
        finally:
            server.stop(0)

        assert provider.renew_certificates() is True
        assert _expiry(provider.head_identity.cert_pem) > tls.now()
        new_env = provider.launcher.env
        assert new_env[tls.ENV_BUNDLE] != first_env[tls.ENV_BUNDLE]
        assert new_env[tls.ENV_BUNDLE_SHA256] != first_env[tls.ENV_BUNDLE_SHA256]

        # A node launched now: RunTask carries the new bundle; the node opens it and the head's
        # renewed credentials complete a real handshake with it.
        arns = provider.launcher.launch(1)
        ecs = aws.client("ecs", "us-east-1")
        task = ecs.describe_tasks(cluster=settings.ecs_cluster, tasks=list(arns))["tasks"][0]
        env = {e["name"]: e["value"] for e in task["overrides"]["containerOverrides"][0]["environment"]}
        assert env[tls.ENV_BUNDLE_SHA256] == new_env[tls.ENV_BUNDLE_SHA256]
        fresh = _node_bundle(aws, env, provider.cluster_id)
        server, address = _serve(fresh.identity)
        try:
            assert _handshake(provider, address)
        finally:
            server.stop(0)
    finally:
        provider.launcher.stop_all("test over")


@pytest.mark.slow
def test_quota_is_read_again_while_waves_are_queued(aws):
    """The quota held the cluster to 1 of 4 workers; once the account's other tasks stop, the next
    scale-up (a minute later) reads it again and launches the rest."""
    import asyncio
    import types

    from starburst.aws.quotas import FakeQuotaSource

    settings = provision.setup(aws.session(), Settings(), head_ip="127.0.0.1").settings
    settings.save()
    options = check_options(workers=(1, 4), cpu=1, memory="2GB", image="example/worker:1",
                            cluster_id=new_cluster_id(settings))
    options = dataclasses.replace(options, region="us-east-1", quota_workers=1)
    quota = FakeQuotaSource(on_demand_limit=4, on_demand_usage=3)  # 3 vCPU of other tasks
    now = [0.0]
    provider = provider_mod.FargateProvider(options, session=aws.session(), settings=settings,
                                            clock=lambda: now[0], quota_source=quota)
    backlog = types.SimpleNamespace(demand=lambda: 8.0)  # the provider's one question to the scheduler here
    provider.head = types.SimpleNamespace(scheduler=backlog)
    try:
        asyncio.run(provider._scale_up())
        assert len(provider.tasks) == 1  # the quota's wave
        quota.usage[False] = 1.0  # the other tasks stopped: only ours runs
        asyncio.run(provider._scale_up())
        assert len(provider.tasks) == 1  # not read again within the minute
        now[0] += provider_mod.QUOTA_REREAD_S
        asyncio.run(provider._scale_up())
        assert len(provider.tasks) == 4 and provider.options.quota_workers == 4
        assert "quota now allows 4 of 4 workers" in provider.message
    finally:
        provider.launcher.stop_all("test over")
