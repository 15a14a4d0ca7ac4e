"""The offline Fargate rehearsal: everything real except AWS itself.

- moto (server mode, 127.0.0.1) answers the control plane: STS, IAM, EC2, ECS, ECR, Logs.
- SeaweedFS (``weed mini``, 127.0.0.1) answers S3: the object store and the TLS bundle.
- ``FakeEcsAgent`` plays Fargate: it runs the real node entry point for each task the head starts.

``Rehearsal.enter()`` prepares an account the way a user would (``starburst setup``, saved
settings, a worker image present in ECR under this environment's hash) and points the environment
at the local servers, so ``starburst.init(cluster="fargate")`` in this process (and the head it
starts) runs unchanged. Used by tests/test_rehearsal.py and benchmarks/bench_fargate.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import urllib.request

from .agent import FakeEcsAgent, tasks_stay_running

REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_moto(endpoint: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200


def put_fake_image(session, repository: str, tag: str) -> None:
    """Record an image manifest in moto's ECR (nothing is pulled in the rehearsal)."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                           "digest": "sha256:" + "0" * 64}, "layers": []}
    session.client("ecr").put_image(repositoryName=repository, imageManifest=json.dumps(manifest),
                                    imageTag=tag)


class Rehearsal:
    """The environment of one rehearsal; ``enter()`` applies it (restored by ``exit()``)."""

    def __init__(self, moto_endpoint: str, s3_env, home: pathlib.Path) -> None:
        self.moto = moto_endpoint
        self.s3 = s3_env
        self.home = home
        self.settings = None
        self._saved: dict[str, str | None] = {}
        self._stack = contextlib.ExitStack()

    def _setenv(self, **values: str) -> None:
        for key, value in values.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    @property
    def node_env(self) -> dict[str, str]:
        """What a node's platform gives it here: its role's credentials and the endpoints."""
        return {k: os.environ[k] for k in (
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_EC2_METADATA_DISABLED", "STARBURST_HOME")}

    def enter(self) -> "Rehearsal":
        import boto3

        from starburst.aws import provision
        from starburst.aws.settings import Settings
        from starburst.envsync import capture

        for key in [k for k in os.environ if k.startswith("AWS_")]:
            self._saved.setdefault(key, os.environ.pop(key))
        self._setenv(
            STARBURST_HOME=str(self.home), AWS_ACCESS_KEY_ID=self.s3.access_key,
            AWS_SECRET_ACCESS_KEY=self.s3.secret_key, AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=self.moto, AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.home / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.home / "no-aws-credentials"),
            STARBURST_HEAD_IP="127.0.0.1",  # the laptop's "public" address: never ask the internet
            # moto has no Price List API (its server, in this process, prints to stdout when asked):
            # the built-in table prices the rehearsal (tests/test_aws_pricing.py drives the API).
            STARBURST_PRICES="builtin",
        )
        self.home.mkdir(parents=True, exist_ok=True)
        reset_moto(self.moto)
        # 'starburst setup', against moto (its bucket is moto's; the data path uses SeaweedFS's).
        settings = Settings(region=REGION, bucket=self.s3.bucket, node_port=_free_port())
        session = boto3.Session(region_name=REGION)
        self.settings = provision.setup(session, settings, head_ip="127.0.0.1").settings
        self.settings.save()
        put_fake_image(session, self.settings.repository, capture().hash())
        self._copy_bucket_settings(session.client("s3"))
        self._setenv(AWS_ENDPOINT_URL_S3=self.s3.endpoint)
        self._stack.enter_context(tasks_stay_running(self.moto))
        return self

    def _copy_bucket_settings(self, moto_s3) -> None:
        """The SeaweedFS bucket gets the tags and default encryption setup gave moto's (SeaweedFS
        has no public access block: that stays moto's alone); ``exit()`` removes them again (the
        server is shared with other tests)."""
        seaweed = self.s3.session().client("s3", endpoint_url=self.s3.endpoint)
        bucket = self.settings.bucket
        tags = moto_s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
        seaweed.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
        encryption = moto_s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        seaweed.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=encryption)
        self._stack.callback(seaweed.delete_bucket_tagging, Bucket=bucket)
        self._stack.callback(seaweed.delete_bucket_encryption, Bucket=bucket)

    def agent(self, log_dir: pathlib.Path, latency_ms: float = 0.0, firewall: bool = False,
              start_delay_s: float = 0.0, **node_env: str) -> FakeEcsAgent:
        """A started agent; ``node_env`` overrides what the nodes' platform gives them;
        ``start_delay_s`` delays each node's start (Fargate's provisioning, scaled down)."""
        return FakeEcsAgent(self.moto, REGION, self.settings.ecs_cluster, {**self.node_env, **node_env}, log_dir,
                            latency_ms=latency_ms, stop_grace_s=5.0, firewall=firewall,
                            start_delay_s=start_delay_s).start()

    def running_tasks(self, cluster_id: str | None = None) -> list[str]:
        import boto3

        ecs = boto3.client("ecs", region_name=REGION)
        kwargs = {"startedBy": cluster_id} if cluster_id else {}
        return ecs.list_tasks(cluster=self.settings.ecs_cluster, desiredStatus="RUNNING", **kwargs)["taskArns"]

    def s3_keys(self, prefix: str) -> list[str]:
        client = self.s3.session().client("s3", endpoint_url=self.s3.endpoint)
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.s3.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def exit(self) -> None:
        self._stack.close()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()
