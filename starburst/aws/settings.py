"""starburst's AWS settings: where its resources live and what they are called, persisted in
``config.home()/aws.json``, plus the tags that mark a resource as starburst's.

Keys of aws.json this module doesn't know are kept as they are, so other parts of starburst can keep
their defaults there."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

from .. import config
from .._files import write_atomic

MANAGED_TAG = "starburst:managed"
CLUSTER_TAG = "starburst:cluster"

#: The values CloudWatch Logs accepts for a retention period.
VALID_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                        2192, 2557, 2922, 3288, 3653)
#: Key prefix in the bucket of the image builds' contexts (``builds/<env hash>.zip``): the only
#: prefix the build role may read; never the object store's.
BUILD_PREFIX = "builds"
#: Image builders: AWS CodeBuild (no local Docker engine needed) or a local Docker engine.
BUILDERS = ("codebuild", "docker")

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
_POLICY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class AwsSetupError(RuntimeError):
    """Setup or teardown can't go on; the message says why and what to do."""


def _default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass
class Settings:
    """Where and how starburst's AWS resources live; persisted in ``config.home()/aws.json``."""

    region: str = field(default_factory=_default_region)
    #: Prefix of every resource name, and the value of the ``starburst:cluster`` tag.
    name: str = "starburst"
    #: The S3 bucket; empty means ``{name}-{account id}-{region}``, filled in by ``setup()``.
    bucket: str = ""
    #: Key prefix of the object store in the bucket: the only one the task role can touch, and
    #: transient (the lifecycle rule expires what a crashed cluster left behind).
    object_prefix: str = "objects"
    #: TCP port the nodes listen on (the head dials it).
    node_port: int = 47000
    log_retention_days: int = 14
    #: Objects under ``object_prefix`` are deleted this many days after they were written.
    transient_expiry_days: int = 7
    #: How worker images are built: ``codebuild`` (default: no local Docker engine needed) or
    #: ``docker`` (a local engine).
    builder: str = "codebuild"
    #: Managed IAM policies attached to the nodes' task role besides its own (what your task code
    #: may do in AWS, e.g. ``arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess`` to read your data).
    task_policy_arns: list[str] = field(default_factory=list)
    #: Keys of aws.json that this module doesn't own, kept as they are by ``save()``.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.region or not re.match(r"^[a-z]{2}(-[a-z]+)+-\d+$", self.region):
            raise ValueError(f"not an AWS region: {self.region!r} (for example 'us-east-1')")
        if not _NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: use 1-32 lowercase letters, digits and hyphens, "
                             "starting with a letter")
        if self.bucket and not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", self.bucket):
            raise ValueError(f"not a valid S3 bucket name: {self.bucket!r}")
        self.object_prefix = self.object_prefix.strip("/")
        if not _PREFIX_RE.match(self.object_prefix):
            raise ValueError(f"object_prefix {self.object_prefix!r}: use letters, digits, '._-' "
                             "and '/' between parts")
        if not 1 <= int(self.node_port) <= 65535:
            raise ValueError(f"node_port {self.node_port} is not a TCP port")
        if self.log_retention_days not in VALID_RETENTION_DAYS:
            raise ValueError(f"log_retention_days {self.log_retention_days}: CloudWatch accepts "
                             f"one of {', '.join(map(str, VALID_RETENTION_DAYS))}")
        if int(self.transient_expiry_days) < 1:
            raise ValueError("transient_expiry_days must be at least 1")
        if self.object_prefix.split("/")[0] == BUILD_PREFIX:
            raise ValueError(f"object_prefix {self.object_prefix!r}: '{BUILD_PREFIX}/' holds the "
                             "image builds' contexts; choose another prefix")
        if self.builder not in BUILDERS:
            raise ValueError(f"builder {self.builder!r}: use one of {', '.join(BUILDERS)}")
        if not isinstance(self.task_policy_arns, list) or not all(
                isinstance(a, str) and _POLICY_ARN_RE.match(a) for a in self.task_policy_arns):
            raise ValueError(f"task_policy_arns {self.task_policy_arns!r}: give managed policy ARNs, e.g. "
                             "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess")

    # -- resource names ---------------------------------------------------------------------

    def bucket_name(self, account_id: str) -> str:
        return self.bucket or f"{self.name}-{account_id}-{self.region}"

    @property
    def repository(self) -> str:
        return self.name

    @property
    def ecs_cluster(self) -> str:
        return self.name

    @property
    def execution_role(self) -> str:
        return f"{self.name}-task-execution-{self.region}"  # IAM is global: one pair per region

    @property
    def task_role(self) -> str:
        return f"{self.name}-task-{self.region}"

    @property
    def log_group(self) -> str:
        return f"/{self.name}/nodes"

    @property
    def security_group(self) -> str:
        return f"{self.name}-nodes"

    @property
    def build_log_group(self) -> str:
        return f"/{self.name}/builds"

    @property
    def build_role(self) -> str:
        return f"{self.name}-image-build-{self.region}"

    @property
    def build_project(self) -> str:
        return f"{self.name}-image-build"

    def build_context_key(self, env_hash: str) -> str:
        """The S3 key of an image build's context (a zip: what CodeBuild's S3 source takes)."""
        return f"{BUILD_PREFIX}/{env_hash}.zip"

    # -- persistence ------------------------------------------------------------------------

    @staticmethod
    def path() -> pathlib.Path:
        return config.home() / "aws.json"

    @classmethod
    def load(cls, path: pathlib.Path | None = None) -> Settings:
        """The saved settings, or the defaults when there is no file yet."""
        path = path or cls.path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise AwsSetupError(f"can't read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise AwsSetupError(f"{path} should hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            return cls(**{k: v for k, v in data.items() if k in known},
                       extra={k: v for k, v in data.items() if k not in known})
        except (TypeError, ValueError) as exc:
            raise AwsSetupError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.name != "extra"})
        return data

    def save(self, path: pathlib.Path | None = None) -> pathlib.Path:
        path = path or self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, [(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()])
        return path




def tag_list(tags: dict[str, str], key: str = "Key", value: str = "Value") -> list[dict]:
    """``{"k": "v"}`` as AWS's ``[{"Key": "k", "Value": "v"}]`` (ECS and CodeBuild: ``key``/``value``)."""
    return [{key: k, value: v} for k, v in tags.items()]


def tag_dict(tags: list[dict] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    """The inverse of ``tag_list``."""
    return {t[key]: t[value] for t in tags or []}


def is_managed(tags: dict[str, str]) -> bool:
    """Whether a resource's tags mark it as starburst's."""
    return tags.get(MANAGED_TAG) == "true"


__all__ = ["AwsSetupError", "Settings", "MANAGED_TAG", "CLUSTER_TAG", "BUILD_PREFIX", "BUILDERS",
           "VALID_RETENTION_DAYS", "tag_list", "tag_dict", "is_managed"]
