"""starburst's AWS resources: settings, idempotent setup, teardown, and listing.

``setup()`` creates or finds, and ``teardown()`` removes, everything the Fargate backend needs in
one account and region::

    s3-bucket           {name}-{account}-{region}   private (public access blocked, ACLs disabled),
                                                     SSE-S3 encrypted, objects under
                                                     {object_prefix}/ expire after N days
    ecr-repository      {name}                      worker images
    ecs-cluster         {name}                      FARGATE and FARGATE_SPOT capacity providers
    iam-execution-role  {name}-task-execution-{region}  pulls the image, writes the log group
    iam-task-role       {name}-task-{region}        the bucket prefix and the log group, nothing else
    log-group           /{name}/nodes               with a retention period
    security-group      {name}-nodes (default VPC)  ingress only from the head's address, node port
    build-log-group     /{name}/builds              the image builds' logs, with a retention period
    iam-build-role      {name}-image-build-{region} CodeBuild's: read builds/ in the bucket, push
                                                     to the one repository, write the build log group
    codebuild-project   {name}-image-build          builds worker images without a local Docker
                                                     engine (``starburst.envsync.image``)

Every resource is tagged ``starburst:managed=true`` and ``starburst:cluster={name}``. A resource
with one of these names that is *not* tagged as starburst's is never adopted or deleted: setup
refuses (before creating anything) and teardown skips it.

Settings live in ``config.home()/aws.json`` (``Settings.load()`` / ``Settings.save()``); keys this
module doesn't know are kept as they are, so other parts of starburst can keep their defaults there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pathlib
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from .. import config
from ._errors import error_code as _code
from .._files import write_atomic

MANAGED_TAG = "starburst:managed"
CLUSTER_TAG = "starburst:cluster"

# Report statuses.
CREATED = "created"
EXISTED = "already existed"
UPDATED = "updated"
DELETED = "deleted"
MISSING = "not found"
EXISTS = "exists"
UNMANAGED = "exists, not starburst's"
SKIPPED = "skipped (not starburst's)"

# Resource kinds, in the order setup creates them (teardown goes the other way).
BUCKET = "s3-bucket"
REPOSITORY = "ecr-repository"
LOG_GROUP = "log-group"
EXECUTION_ROLE = "iam-execution-role"
TASK_ROLE = "iam-task-role"
ECS_CLUSTER = "ecs-cluster"
SECURITY_GROUP = "security-group"
BUILD_LOG_GROUP = "build-log-group"
BUILD_ROLE = "iam-build-role"
BUILD_PROJECT = "codebuild-project"
KINDS = (BUCKET, REPOSITORY, LOG_GROUP, EXECUTION_ROLE, TASK_ROLE, ECS_CLUSTER, SECURITY_GROUP,
         BUILD_LOG_GROUP, BUILD_ROLE, BUILD_PROJECT)
#: The kinds the image build needs (``ensure_build_resources``), in creation order.
BUILD_KINDS = (BUILD_LOG_GROUP, BUILD_ROLE, BUILD_PROJECT)

#: The values CloudWatch Logs accepts for a retention period.
VALID_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827,
                        2192, 2557, 2922, 3288, 3653)

CAPACITY_PROVIDERS = ("FARGATE", "FARGATE_SPOT")
DEFAULT_CAPACITY_STRATEGY = [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}]
LIFECYCLE_RULE_ID = "starburst-transient-expiry"
INLINE_POLICY_NAME = "starburst"
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"

#: Key prefix in the bucket of the image builds' contexts (``builds/<env hash>.zip``): the only
#: prefix the build role may read; never the object store's.
BUILD_PREFIX = "builds"
#: Image builders: AWS CodeBuild (no local Docker engine needed) or a local Docker engine.
BUILDERS = ("codebuild", "docker")
#: The CodeBuild build environments, by CPU architecture (native builds: no emulation). The
#: project is made for x86_64; an arm64 build overrides type, image and compute type.
CODEBUILD_ENVIRONMENTS = {
    "x86_64": {"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
               "computeType": "BUILD_GENERAL1_MEDIUM"},
    "arm64": {"type": "ARM_CONTAINER", "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0",
              "computeType": "BUILD_GENERAL1_LARGE"},
}
BUILD_TIMEOUT_MINUTES = 60

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
_POLICY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(aws|\d{12}):policy/[\w+=,.@/-]+$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class AwsSetupError(RuntimeError):
    """Setup or teardown can't go on; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# settings


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


# --------------------------------------------------------------------------------------------
# reports


@dataclass
class Resource:
    kind: str
    name: str
    status: str
    arn: str = ""
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"  {self.kind:<19} {self.name:<40} {self.status}{detail}"


class _Report:
    resources: list[Resource]

    def __getitem__(self, kind: str) -> Resource:
        for r in self.resources:
            if r.kind == kind:
                return r
        raise KeyError(kind)

    def statuses(self) -> dict[str, str]:
        return {r.kind: r.status for r in self.resources}


@dataclass
class SetupReport(_Report):
    account_id: str
    region: str
    #: The settings with the bucket name filled in: save them (``report.settings.save()``).
    settings: Settings
    resources: list[Resource]
    #: The IAM policy documents in force, by name, for printing.
    policies: dict[str, dict]

    @property
    def changed(self) -> bool:
        return any(r.status != EXISTED for r in self.resources)

    def format(self, policies: bool = False) -> str:
        lines = [f"starburst AWS resources in account {self.account_id}, {self.region}:"]
        lines += [r.line() for r in self.resources]
        if policies:
            for name, doc in self.policies.items():
                lines.append(f"\n{name}:")
                lines.append(json.dumps(doc, indent=2))
        return "\n".join(lines)


@dataclass
class TeardownReport(_Report):
    account_id: str
    region: str
    resources: list[Resource]

    def format(self) -> str:
        lines = [f"starburst AWS resources removed from account {self.account_id}, {self.region}:"]
        return "\n".join(lines + [r.line() for r in self.resources])


# --------------------------------------------------------------------------------------------
# helpers


def _tag_list(tags: dict[str, str], key: str = "Key", value: str = "Value") -> list[dict]:
    return [{key: k, value: v} for k, v in tags.items()]


def _tag_dict(tags: list[dict] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {t[key]: t[value] for t in tags or []}


def _managed(tags: dict[str, str]) -> bool:
    return tags.get(MANAGED_TAG) == "true"


def _decode_policy(doc: Any) -> dict:
    if isinstance(doc, str):
        doc = json.loads(urllib.parse.unquote(doc))
    return doc


def _canonical(value: Any) -> Any:
    """A policy document in a form where equal meaning compares equal (lists sorted, a
    one-element list the same as its element)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if len(items) == 1:
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _same_policy(a: Any, b: Any) -> bool:
    return _canonical(_decode_policy(a)) == _canonical(_decode_policy(b))


class _Ctx:
    """One run against one account and region: clients, identity, derived names."""

    def __init__(self, session, settings: Settings):
        self.session = session
        self.settings = settings
        self.region = settings.region
        self._clients: dict[str, Any] = {}
        try:
            ident = self.client("sts").get_caller_identity()
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise AwsSetupError(
                "no AWS credentials found: configure them ('aws configure', AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and run this again") from exc
        except EndpointConnectionError as exc:
            raise AwsSetupError(f"can't reach AWS in region {self.region}: {exc}") from exc
        except ClientError as exc:
            raise AwsSetupError(f"AWS refused the credentials ({_code(exc)}): "
                                f"{exc.response.get('Error', {}).get('Message', exc)}") from exc
        self.account = ident["Account"]
        self.caller_arn = ident["Arn"]
        self.partition = ident["Arn"].split(":")[1] or "aws"
        try:
            known = session.get_available_regions("ecs", partition_name=self.partition)
        except Exception:  # noqa: BLE001 - an offline list; never a reason to fail
            known = []
        if known and self.region not in known:
            raise AwsSetupError(f"region {self.region!r} has no ECS in partition {self.partition} "
                                f"(known: {', '.join(sorted(known))})")
        self.bucket = settings.bucket_name(self.account)
        self.tags = {MANAGED_TAG: "true", CLUSTER_TAG: settings.name}

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, region_name=self.region, config=_CLIENT_CONFIG)
        return self._clients[service]

    # -- ARNs -------------------------------------------------------------------------------

    def arn(self, service: str, resource: str, region: bool = True, account: bool = True) -> str:
        return (f"arn:{self.partition}:{service}:{self.region if region else ''}:"
                f"{self.account if account else ''}:{resource}")

    @property
    def bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.bucket}"

    @property
    def log_group_arn(self) -> str:
        return self.arn("logs", f"log-group:{self.settings.log_group}")

    @property
    def repository_arn(self) -> str:
        return self.arn("ecr", f"repository/{self.settings.repository}")

    @property
    def build_log_group_arn(self) -> str:
        return self.arn("logs", f"log-group:{self.settings.build_log_group}")

    @property
    def build_project_arn(self) -> str:
        return self.arn("codebuild", f"project/{self.settings.build_project}")

    @property
    def build_role_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.settings.build_role}"


# --------------------------------------------------------------------------------------------
# policy documents


def _trust_policy(ctx: _Ctx) -> dict:
    """Only ECS tasks of this account may assume the roles (confused-deputy guard)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": ctx.account},
                "ArnLike": {"aws:SourceArn": ctx.arn("ecs", "*")},
            },
        }],
    }


def _execution_policy(ctx: _Ctx) -> dict:
    """What ECS needs to start a node: pull from the repository, write to the log group. The
    inline equivalent of AmazonECSTaskExecutionRolePolicy, narrowed to starburst's resources
    (ecr:GetAuthorizationToken has no resource-level permissions)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken",
             "Resource": "*"},
            {"Sid": "PullImage", "Effect": "Allow",
             "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                        "ecr:GetDownloadUrlForLayer"],
             "Resource": ctx.repository_arn},
            {"Sid": "WriteLogs", "Effect": "Allow",
             "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"{ctx.log_group_arn}:*"},
        ],
    }


def _task_policy(ctx: _Ctx) -> dict:
    """What code on a node may do: the object store's prefix of the bucket and the log group."""
    prefix = ctx.settings.object_prefix
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ObjectStore", "Effect": "Allow",
             "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
             "Resource": f"{ctx.bucket_arn}/{prefix}/*"},
            {"Sid": "ListObjectStore", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": ctx.bucket_arn,
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}}},
            {"Sid": "WriteLogs", "Effect": "Allow",
             "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"{ctx.log_group_arn}:*"},
        ],
    }


def _build_trust_policy(ctx: _Ctx) -> dict:
    """Only starburst's CodeBuild project in this account may assume the build role."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "codebuild.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": ctx.account},
                "ArnLike": {"aws:SourceArn": ctx.build_project_arn},
            },
        }],
    }


def _build_policy(ctx: _Ctx) -> dict:
    """What an image build may do: read the build contexts under ``builds/`` (CodeBuild's S3
    source also reads the bucket's location and ACL), push to the one repository, and write its
    own log group. Nothing of the object store, no other repository."""
    logs = ctx.build_log_group_arn
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadBuildContext", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:GetObjectVersion"],
             "Resource": f"{ctx.bucket_arn}/{BUILD_PREFIX}/*"},
            {"Sid": "BuildSourceBucket", "Effect": "Allow",
             "Action": ["s3:GetBucketAcl", "s3:GetBucketLocation"],
             "Resource": ctx.bucket_arn},
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken",
             "Resource": "*"},
            {"Sid": "PushImage", "Effect": "Allow",
             "Action": ["ecr:BatchCheckLayerAvailability", "ecr:CompleteLayerUpload",
                        "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
             "Resource": ctx.repository_arn},
            {"Sid": "WriteBuildLogs", "Effect": "Allow",
             "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": [logs, f"{logs}:*"]},
        ],
    }


def _policy_documents(ctx: _Ctx) -> dict[str, dict]:
    s = ctx.settings
    return {
        f"{s.execution_role} trust policy": _trust_policy(ctx),
        f"{s.execution_role} inline policy '{INLINE_POLICY_NAME}'": _execution_policy(ctx),
        f"{s.task_role} trust policy": _trust_policy(ctx),
        f"{s.task_role} inline policy '{INLINE_POLICY_NAME}'": _task_policy(ctx),
        f"{s.build_role} trust policy": _build_trust_policy(ctx),
        f"{s.build_role} inline policy '{INLINE_POLICY_NAME}'": _build_policy(ctx),
        **({f"{s.task_role} attached managed policies (task_policy_arns)": list(s.task_policy_arns)}
           if s.task_policy_arns else {}),
    }


# --------------------------------------------------------------------------------------------
# one class per kind of resource: find (exists? ours?), ensure, delete


@dataclass
class _Found:
    exists: bool
    managed: bool = False
    arn: str = ""
    info: Any = None


class _Kind:
    kind = ""

    def __init__(self, ctx: _Ctx):
        self.ctx = ctx
        self.s = ctx.settings

    @property
    def name(self) -> str:
        raise NotImplementedError

    def find(self) -> _Found:
        raise NotImplementedError

    def create(self) -> tuple[str, list[str]]:
        """Create it; returns (arn, notes)."""
        raise NotImplementedError

    def reconcile(self, found: _Found) -> list[str]:
        """Bring an existing one to the wanted state; returns what was changed."""
        return []

    def delete(self, found: _Found) -> None:
        raise NotImplementedError

    def ensure(self, found: _Found) -> Resource:
        if not found.exists:
            arn, notes = self.create()
            for attempt in range(8):  # IAM and friends are eventually consistent
                found = self.find()
                if found.exists:
                    break
                time.sleep(min(0.5 * 2 ** attempt, 5))
            else:
                raise AwsSetupError(f"{self.kind} {self.name} was created but doesn't show up "
                                    "yet: run setup again in a minute")
            notes += self.reconcile(found)  # settings applied after creation, where they apply
            return Resource(self.kind, self.name, CREATED, found.arn or arn, ", ".join(notes))
        changes = self.reconcile(found)
        return Resource(self.kind, self.name, UPDATED if changes else EXISTED, found.arn,
                        ", ".join(changes))


class _Bucket(_Kind):
    kind = BUCKET

    @property
    def name(self) -> str:
        return self.ctx.bucket

    @property
    def s3(self):
        return self.ctx.client("s3")

    def find(self) -> _Found:
        try:
            self.s3.head_bucket(Bucket=self.name)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return _Found(False)
            if _code(exc) in ("403", "AccessDenied", "Forbidden"):
                raise AwsSetupError(
                    f"the S3 bucket {self.name} exists but this account can't use it (bucket "
                    f"names are global): set another 'bucket' in {Settings.path()}") from exc
            raise
        try:
            tags = _tag_dict(self.s3.get_bucket_tagging(Bucket=self.name)["TagSet"])
        except ClientError as exc:
            if _code(exc) != "NoSuchTagSet":
                raise
            tags = {}
        return _Found(True, _managed(tags), self.ctx.bucket_arn, tags)

    def create(self) -> tuple[str, list[str]]:
        kwargs: dict[str, Any] = {"Bucket": self.name, "ObjectOwnership": "BucketOwnerEnforced"}
        if self.ctx.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.ctx.region}
        try:
            self.s3.create_bucket(**kwargs)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyExists":
                raise AwsSetupError(
                    f"the S3 bucket name {self.name} is taken by another account (bucket names "
                    f"are global): set another 'bucket' in {Settings.path()}") from exc
            if _code(exc) != "BucketAlreadyOwnedByYou":
                raise
        self.s3.put_bucket_tagging(Bucket=self.name, Tagging={"TagSet": _tag_list(self.ctx.tags)})
        return self.ctx.bucket_arn, []

    def _lifecycle_rule(self) -> dict:
        return {
            "ID": LIFECYCLE_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": f"{self.s.object_prefix}/"},
            "Expiration": {"Days": int(self.s.transient_expiry_days)},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }

    @staticmethod
    def _rule_key(rule: dict) -> tuple:
        prefix = (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix"))
        return (rule.get("Status"), prefix, (rule.get("Expiration") or {}).get("Days"),
                (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"))

    def reconcile(self, found: _Found) -> list[str]:
        s3, b, changes = self.s3, self.name, []
        tags = found.info or {}
        if any(tags.get(k) != v for k, v in self.ctx.tags.items()):
            s3.put_bucket_tagging(Bucket=b, Tagging={"TagSet": _tag_list({**tags, **self.ctx.tags})})
            changes.append("tags")

        want_block = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                      "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
        try:
            block = s3.get_public_access_block(Bucket=b)["PublicAccessBlockConfiguration"]
        except ClientError as exc:
            if _code(exc) != "NoSuchPublicAccessBlockConfiguration":
                raise
            block = {}
        if any(block.get(k) is not True for k in want_block):
            s3.put_public_access_block(Bucket=b, PublicAccessBlockConfiguration=want_block)
            changes.append("public access block")

        try:
            rules = s3.get_bucket_ownership_controls(Bucket=b)["OwnershipControls"]["Rules"]
        except ClientError as exc:
            if _code(exc) != "OwnershipControlsNotFoundError":
                raise
            rules = []
        if [r.get("ObjectOwnership") for r in rules] != ["BucketOwnerEnforced"]:
            s3.put_bucket_ownership_controls(
                Bucket=b, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
            changes.append("ACLs disabled")

        try:
            enc = s3.get_bucket_encryption(Bucket=b)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as exc:
            if _code(exc) != "ServerSideEncryptionConfigurationNotFoundError":
                raise
            enc = []
        algorithms = [r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
                      for r in enc]
        if algorithms != ["AES256"]:  # SSE-S3: the task role needs no KMS permissions
            s3.put_bucket_encryption(Bucket=b, ServerSideEncryptionConfiguration={"Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
            changes.append("default encryption")

        try:
            lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=b)["Rules"]
        except ClientError as exc:
            if _code(exc) != "NoSuchLifecycleConfiguration":
                raise
            lifecycle = []
        ours = [r for r in lifecycle if r.get("ID") == LIFECYCLE_RULE_ID]
        want = self._lifecycle_rule()
        if len(ours) != 1 or self._rule_key(ours[0]) != self._rule_key(want):
            others = [r for r in lifecycle if r.get("ID") != LIFECYCLE_RULE_ID]
            s3.put_bucket_lifecycle_configuration(
                Bucket=b, LifecycleConfiguration={"Rules": others + [want]})
            changes.append("lifecycle rule")

        return changes

    def delete(self, found: _Found) -> None:
        s3, b = self.s3, self.name
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=b):
            for up in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=b, Key=up["Key"], UploadId=up["UploadId"])
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=b):
            doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                      for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for i in range(0, len(doomed), 1000):
                resp = s3.delete_objects(Bucket=b, Delete={"Objects": doomed[i:i + 1000],
                                                           "Quiet": True})
                if resp.get("Errors"):
                    first = resp["Errors"][0]
                    raise AwsSetupError(
                        f"can't empty bucket {b}: {len(resp['Errors'])} objects not deleted, "
                        f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        try:
            s3.delete_bucket(Bucket=b)
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise


class _Repository(_Kind):
    kind = REPOSITORY

    @property
    def name(self) -> str:
        return self.s.repository

    @property
    def ecr(self):
        return self.ctx.client("ecr")

    def find(self) -> _Found:
        try:
            repo = self.ecr.describe_repositories(repositoryNames=[self.name])["repositories"][0]
        except ClientError as exc:
            if _code(exc) == "RepositoryNotFoundException":
                return _Found(False)
            raise
        tags = _tag_dict(self.ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"])
        return _Found(True, _managed(tags), repo["repositoryArn"], tags)

    def create(self) -> tuple[str, list[str]]:
        repo = self.ecr.create_repository(
            repositoryName=self.name, tags=_tag_list(self.ctx.tags),
            encryptionConfiguration={"encryptionType": "AES256"})["repository"]
        return repo["repositoryArn"], []

    def reconcile(self, found: _Found) -> list[str]:
        if any((found.info or {}).get(k) != v for k, v in self.ctx.tags.items()):
            self.ecr.tag_resource(resourceArn=found.arn, tags=_tag_list(self.ctx.tags))
            return ["tags"]
        return []

    def delete(self, found: _Found) -> None:
        try:
            self.ecr.delete_repository(repositoryName=self.name, force=True)
        except ClientError as exc:
            if _code(exc) != "RepositoryNotFoundException":
                raise


class _LogGroup(_Kind):
    kind = LOG_GROUP

    @property
    def name(self) -> str:
        return self.s.log_group

    @property
    def group_arn(self) -> str:
        return self.ctx.log_group_arn

    @property
    def logs(self):
        return self.ctx.client("logs")

    def find(self) -> _Found:
        groups = self.logs.describe_log_groups(logGroupNamePrefix=self.name)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == self.name), None)
        if group is None:
            return _Found(False)
        tags = self.logs.list_tags_log_group(logGroupName=self.name).get("tags", {})
        return _Found(True, _managed(tags), self.group_arn, {"group": group, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        try:
            self.logs.create_log_group(logGroupName=self.name, tags=dict(self.ctx.tags))
        except ClientError as exc:
            if _code(exc) != "ResourceAlreadyExistsException":
                raise
        return self.group_arn, []

    def reconcile(self, found: _Found) -> list[str]:
        changes = []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.logs.tag_log_group(logGroupName=self.name, tags=dict(self.ctx.tags))
            changes.append("tags")
        if found.info["group"].get("retentionInDays") != self.s.log_retention_days:
            self.logs.put_retention_policy(logGroupName=self.name,
                                           retentionInDays=self.s.log_retention_days)
            changes.append(f"retention {self.s.log_retention_days} days")
        return changes

    def ensure(self, found: _Found) -> Resource:
        res = super().ensure(found)
        if res.status == CREATED:  # the retention set right after creation is part of creating
            res.detail = f"retention {self.s.log_retention_days} days"
        return res

    def delete(self, found: _Found) -> None:
        try:
            self.logs.delete_log_group(logGroupName=self.name)
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise


class _Role(_Kind):
    description = ""

    def policy(self) -> dict:
        raise NotImplementedError

    def trust(self) -> dict:
        return _trust_policy(self.ctx)

    def attached(self) -> list[str]:
        """Managed policies the role should have attached (none: least privilege by default)."""
        return []

    @property
    def iam(self):
        return self.ctx.client("iam")

    def find(self) -> _Found:
        try:
            role = self.iam.get_role(RoleName=self.name)["Role"]
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return _Found(False)
            raise
        tags = _tag_dict(self.iam.list_role_tags(RoleName=self.name).get("Tags"))
        return _Found(True, _managed(tags), role["Arn"], {"role": role, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        role = self.iam.create_role(
            RoleName=self.name, Description=self.description,
            AssumeRolePolicyDocument=json.dumps(self.trust()),
            Tags=_tag_list(self.ctx.tags))["Role"]
        self.iam.put_role_policy(RoleName=self.name, PolicyName=INLINE_POLICY_NAME,
                                 PolicyDocument=json.dumps(self.policy()))
        for arn in self.attached():
            self._attach(arn)
        return role["Arn"], [f"attached {arn.rsplit('/', 1)[-1]}" for arn in self.attached()]

    def _attach(self, arn: str) -> None:
        try:
            self.iam.attach_role_policy(RoleName=self.name, PolicyArn=arn)
        except ClientError as exc:
            if _code(exc) in ("NoSuchEntity", "InvalidInput"):
                raise AwsSetupError(f"task policy {arn} does not exist or can't be attached: check "
                                    "task_policy_arns (starburst setup --task-policy)") from exc
            raise

    def reconcile(self, found: _Found) -> list[str]:
        iam, changes = self.iam, []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            iam.tag_role(RoleName=self.name, Tags=_tag_list(self.ctx.tags))
            changes.append("tags")
        if not _same_policy(found.info["role"]["AssumeRolePolicyDocument"], self.trust()):
            iam.update_assume_role_policy(RoleName=self.name,
                                          PolicyDocument=json.dumps(self.trust()))
            changes.append("trust policy")
        # Least privilege: the one inline policy, exactly, and only the managed policies asked for.
        for name in self._inline_names():
            if name != INLINE_POLICY_NAME:
                iam.delete_role_policy(RoleName=self.name, PolicyName=name)
                changes.append(f"removed inline policy {name}")
        try:
            current = iam.get_role_policy(RoleName=self.name,
                                          PolicyName=INLINE_POLICY_NAME)["PolicyDocument"]
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
            current = None
        if current is None or not _same_policy(current, self.policy()):
            iam.put_role_policy(RoleName=self.name, PolicyName=INLINE_POLICY_NAME,
                                PolicyDocument=json.dumps(self.policy()))
            changes.append("inline policy")
        wanted = self.attached()
        have = self._attached_arns()
        for arn in have:
            if arn not in wanted:
                iam.detach_role_policy(RoleName=self.name, PolicyArn=arn)
                changes.append(f"detached {arn.rsplit('/', 1)[-1]}")
        for arn in wanted:
            if arn not in have:
                self._attach(arn)
                changes.append(f"attached {arn.rsplit('/', 1)[-1]}")
        return changes

    def _inline_names(self) -> list[str]:
        names: list[str] = []
        for page in self.iam.get_paginator("list_role_policies").paginate(RoleName=self.name):
            names += page["PolicyNames"]
        return names

    def _attached_arns(self) -> list[str]:
        arns: list[str] = []
        for page in self.iam.get_paginator("list_attached_role_policies").paginate(
                RoleName=self.name):
            arns += [p["PolicyArn"] for p in page["AttachedPolicies"]]
        return arns

    def delete(self, found: _Found) -> None:
        iam = self.iam
        try:
            for name in self._inline_names():
                iam.delete_role_policy(RoleName=self.name, PolicyName=name)
            for arn in self._attached_arns():
                iam.detach_role_policy(RoleName=self.name, PolicyArn=arn)
            profiles = iam.list_instance_profiles_for_role(RoleName=self.name)["InstanceProfiles"]
            for profile in profiles:
                iam.remove_role_from_instance_profile(
                    InstanceProfileName=profile["InstanceProfileName"], RoleName=self.name)
            iam.delete_role(RoleName=self.name)
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise


class _ExecutionRole(_Role):
    kind = EXECUTION_ROLE
    description = "starburst: lets ECS pull the node image and write the node log group"

    @property
    def name(self) -> str:
        return self.s.execution_role

    def policy(self) -> dict:
        return _execution_policy(self.ctx)


class _TaskRole(_Role):
    kind = TASK_ROLE
    description = "starburst: what node code may do (the object store prefix, the log group)"

    @property
    def name(self) -> str:
        return self.s.task_role

    def policy(self) -> dict:
        return _task_policy(self.ctx)

    def attached(self) -> list[str]:
        return list(self.s.task_policy_arns)


class _Cluster(_Kind):
    kind = ECS_CLUSTER

    @property
    def name(self) -> str:
        return self.s.ecs_cluster

    @property
    def ecs(self):
        return self.ctx.client("ecs")

    def find(self) -> _Found:
        resp = self.ecs.describe_clusters(clusters=[self.name], include=["TAGS"])
        live = [c for c in resp.get("clusters", []) if c.get("status") != "INACTIVE"]
        if not live:
            return _Found(False)
        cluster = live[0]
        tags = _tag_dict(cluster.get("tags"), "key", "value")
        return _Found(True, _managed(tags), cluster["clusterArn"], {"cluster": cluster, "tags": tags})

    def _ensure_service_linked_role(self) -> list[str]:
        """ECS needs its service-linked role for capacity providers; in an account that never used
        ECS, creating the cluster fails until it exists. AWS-managed and shared: never deleted."""
        iam = self.ctx.client("iam")
        try:
            iam.get_role(RoleName=ECS_SERVICE_LINKED_ROLE)
            return []
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
        try:
            iam.create_service_linked_role(AWSServiceName="ecs.amazonaws.com")
        except ClientError as exc:
            # "has been taken": it exists after all (created meanwhile; moto names it otherwise)
            if _code(exc) not in ("InvalidInput", "EntityAlreadyExists"):
                raise
            return []
        return [f"created the ECS service-linked role {ECS_SERVICE_LINKED_ROLE}"]

    def create(self) -> tuple[str, list[str]]:
        notes = self._ensure_service_linked_role()
        cluster = self.ecs.create_cluster(
            clusterName=self.name, tags=_tag_list(self.ctx.tags, "key", "value"),
            capacityProviders=list(CAPACITY_PROVIDERS),
            defaultCapacityProviderStrategy=DEFAULT_CAPACITY_STRATEGY)["cluster"]
        return cluster["clusterArn"], notes

    def reconcile(self, found: _Found) -> list[str]:
        changes = []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.ecs.tag_resource(resourceArn=found.arn,
                                  tags=_tag_list(self.ctx.tags, "key", "value"))
            changes.append("tags")
        cluster = found.info["cluster"]
        strategy = [{"capacityProvider": s["capacityProvider"], "weight": s.get("weight", 0),
                     "base": s.get("base", 0)}
                    for s in cluster.get("defaultCapacityProviderStrategy", [])]
        if (sorted(cluster.get("capacityProviders", [])) != sorted(CAPACITY_PROVIDERS)
                or strategy != DEFAULT_CAPACITY_STRATEGY):
            changes += self._ensure_service_linked_role()
            self.ecs.put_cluster_capacity_providers(
                cluster=self.name, capacityProviders=list(CAPACITY_PROVIDERS),
                defaultCapacityProviderStrategy=DEFAULT_CAPACITY_STRATEGY)
            changes.append("capacity providers")
        return changes

    def _paged(self, method: str, key: str, **kwargs) -> list:
        out: list = []
        for page in self.ecs.get_paginator(method).paginate(**kwargs):
            out += page[key]
        return out

    def delete(self, found: _Found, wait_timeout: float = 300.0) -> None:
        ecs = self.ecs
        tasks = self._paged("list_tasks", "taskArns", cluster=self.name)
        for arn in tasks:
            ecs.stop_task(cluster=self.name, task=arn, reason="starburst teardown")
        for arn in self._paged("list_services", "serviceArns", cluster=self.name):
            ecs.delete_service(cluster=self.name, service=arn, force=True)
        # Task definitions starburst registered (families named '{name}-...', tagged as ours)
        # stop being usable. Filtered here rather than with familyPrefix, which moto treats as
        # an exact family name.
        for arn in self._paged("list_task_definitions", "taskDefinitionArns", status="ACTIVE"):
            family = arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]
            if not family.startswith(f"{self.s.name}-"):
                continue
            desc = ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"])
            if _managed(_tag_dict(desc.get("tags"), "key", "value")):
                ecs.deregister_task_definition(taskDefinition=arn)
        deadline = time.monotonic() + wait_timeout
        while True:
            try:
                ecs.delete_cluster(cluster=self.name)
                return
            except ClientError as exc:
                if _code(exc) == "ClusterNotFoundException":
                    return
                # Stopping tasks take a while to reach STOPPED; until then the cluster stays.
                if (_code(exc) not in ("ClusterContainsTasksException",
                                       "ClusterContainsServicesException")
                        or time.monotonic() > deadline):
                    raise
            time.sleep(5)


class _SecurityGroup(_Kind):
    kind = SECURITY_GROUP

    def __init__(self, ctx: _Ctx, head_ip: str | None = None):
        super().__init__(ctx)
        self.head_ip = head_ip
        self._vpc: str | None = None

    @property
    def name(self) -> str:
        return self.s.security_group

    @property
    def ec2(self):
        return self.ctx.client("ec2")

    def vpc(self, required: bool = True) -> str | None:
        if self._vpc is None:
            vpcs = self.ec2.describe_vpcs(
                Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                if not required:
                    return None
                raise AwsSetupError(
                    f"region {self.ctx.region} has no default VPC, where starburst runs its "
                    f"nodes: create one with 'aws ec2 create-default-vpc --region "
                    f"{self.ctx.region}' and run setup again")
            self._vpc = vpcs[0]["VpcId"]
        return self._vpc

    def find(self) -> _Found:
        vpc = self.vpc(required=False)
        if vpc is None:
            return _Found(False)
        groups = self.ec2.describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "group-name", "Values": [self.name]}])["SecurityGroups"]
        if not groups:
            return _Found(False)
        group = groups[0]
        tags = _tag_dict(group.get("Tags"))
        arn = self.ctx.arn("ec2", f"security-group/{group['GroupId']}")
        return _Found(True, _managed(tags), arn, {"group": group, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        gid = self.ec2.create_security_group(
            GroupName=self.name, VpcId=self.vpc(),
            Description="starburst nodes: only the head's address, on the node port",
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": _tag_list(self.ctx.tags)}])["GroupId"]
        return self.ctx.arn("ec2", f"security-group/{gid}"), []

    def _wanted(self) -> tuple | None:
        if self.head_ip is None:
            return None
        ip = ipaddress.ip_address(self.head_ip)
        return ("tcp", self.s.node_port, self.s.node_port,
                "cidr4" if ip.version == 4 else "cidr6", f"{ip}/{ip.max_prefixlen}")

    @staticmethod
    def _rules(group: dict) -> list[tuple[tuple, dict]]:
        """Each ingress rule of a group, as a comparable tuple and as the IpPermission that
        revokes it."""
        out = []
        for perm in group.get("IpPermissions", []):
            base = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
            key = (perm.get("IpProtocol"), perm.get("FromPort"), perm.get("ToPort"))
            for r in perm.get("IpRanges", []):
                out.append((key + ("cidr4", r["CidrIp"]), {**base, "IpRanges": [{"CidrIp": r["CidrIp"]}]}))
            for r in perm.get("Ipv6Ranges", []):
                out.append((key + ("cidr6", r["CidrIpv6"]),
                            {**base, "Ipv6Ranges": [{"CidrIpv6": r["CidrIpv6"]}]}))
            for r in perm.get("PrefixListIds", []):
                out.append((key + ("prefix-list", r["PrefixListId"]),
                            {**base, "PrefixListIds": [{"PrefixListId": r["PrefixListId"]}]}))
            for r in perm.get("UserIdGroupPairs", []):
                pair = {k: r[k] for k in ("GroupId", "UserId") if k in r}
                out.append((key + ("group", r.get("GroupId")), {**base, "UserIdGroupPairs": [pair]}))
        return out

    def _keep(self, rule: tuple, wanted: tuple | None) -> bool:
        if wanted is not None:
            return rule == wanted
        # No head address given: keep a rule for one host on the node port (the current head's).
        proto, lo, hi, kind, value = rule
        return (proto == "tcp" and lo == hi == self.s.node_port
                and ((kind == "cidr4" and value.endswith("/32"))
                     or (kind == "cidr6" and value.endswith("/128"))))

    def reconcile(self, found: _Found) -> list[str]:
        changes = []
        gid = found.info["group"]["GroupId"]
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.ec2.create_tags(Resources=[gid], Tags=_tag_list(self.ctx.tags))
            changes.append("tags")
        wanted = self._wanted()
        rules = self._rules(found.info["group"])
        doomed = [perm for rule, perm in rules if not self._keep(rule, wanted)]
        if doomed:
            self.ec2.revoke_security_group_ingress(GroupId=gid, IpPermissions=doomed)
            changes.append("removed ingress " + ", ".join(_describe_perm(p) for p in doomed))
        if wanted is not None and wanted not in [rule for rule, _ in rules]:
            _, lo, hi, kind, value = wanted
            ranges = ({"IpRanges": [{"CidrIp": value, "Description": "starburst head"}]}
                      if kind == "cidr4" else
                      {"Ipv6Ranges": [{"CidrIpv6": value, "Description": "starburst head"}]})
            perm = {"IpProtocol": "tcp", "FromPort": lo, "ToPort": hi, **ranges}
            self.ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[perm])
            changes.append(f"admitted {_describe_perm(perm)}")
        return changes

    def ensure(self, found: _Found) -> Resource:
        res = super().ensure(found)
        if res.status == CREATED:
            wanted = self._wanted()
            res.detail = (f"ingress tcp/{self.s.node_port} from {wanted[4]}" if wanted
                          else "no ingress yet: no head address given")
        return res

    def delete(self, found: _Found, wait_timeout: float = 300.0) -> None:
        gid = found.info["group"]["GroupId"]
        deadline = time.monotonic() + wait_timeout
        while True:
            try:
                self.ec2.delete_security_group(GroupId=gid)
                return
            except ClientError as exc:
                if _code(exc) in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
                    return
                # Network interfaces of stopping tasks hold the group for a minute or two.
                if _code(exc) != "DependencyViolation" or time.monotonic() > deadline:
                    raise
            time.sleep(10)


def _describe_perm(perm: dict) -> str:
    sources = ([r["CidrIp"] for r in perm.get("IpRanges", [])]
               + [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
               + [r["PrefixListId"] for r in perm.get("PrefixListIds", [])]
               + [r.get("GroupId", "?") for r in perm.get("UserIdGroupPairs", [])])
    proto = perm.get("IpProtocol")
    if proto == "-1":
        ports = "all"
    else:
        lo, hi = perm.get("FromPort"), perm.get("ToPort")
        ports = f"{proto}/{lo}" if lo == hi else f"{proto}/{lo}-{hi}"
    return f"{ports} from {', '.join(sources)}"


class _BuildLogGroup(_LogGroup):
    kind = BUILD_LOG_GROUP

    @property
    def name(self) -> str:
        return self.s.build_log_group

    @property
    def group_arn(self) -> str:
        return self.ctx.build_log_group_arn


class _BuildRole(_Role):
    kind = BUILD_ROLE
    description = ("starburst: lets CodeBuild read build contexts, push worker images to the "
                   "repository and write the build log group")

    @property
    def name(self) -> str:
        return self.s.build_role

    def trust(self) -> dict:
        return _build_trust_policy(self.ctx)

    def policy(self) -> dict:
        return _build_policy(self.ctx)


def _subset(want: Any, have: Any) -> bool:
    """``have`` (as AWS describes it, with fields of its own) holds everything in ``want``."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_subset(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and sorted(map(json.dumps, want)) == sorted(map(json.dumps, have))
    return want == have


class _BuildProject(_Kind):
    """The CodeBuild project that builds worker images: S3 source (a build context uploaded per
    build to ``builds/<hash>.zip``, given as the build's source location), privileged mode (it
    runs ``docker build``), the buildspec of ``starburst.envsync.image``, logs in the build log
    group, the local Docker layer cache."""

    kind = BUILD_PROJECT

    @property
    def name(self) -> str:
        return self.s.build_project

    @property
    def codebuild(self):
        return self.ctx.client("codebuild")

    def wanted(self) -> dict:
        from ..envsync.image import BUILDSPEC

        return {
            "description": "starburst: builds worker images (Dockerfile generated by "
                           "starburst.envsync) and pushes them to ECR",
            "source": {"type": "S3", "location": f"{self.ctx.bucket}/{BUILD_PREFIX}/",
                       "buildspec": BUILDSPEC},
            "artifacts": {"type": "NO_ARTIFACTS"},
            "environment": {**CODEBUILD_ENVIRONMENTS["x86_64"], "privilegedMode": True,
                            "imagePullCredentialsType": "CODEBUILD"},
            "serviceRole": self.ctx.build_role_arn,
            "timeoutInMinutes": BUILD_TIMEOUT_MINUTES,
            "logsConfig": {"cloudWatchLogs": {"status": "ENABLED",
                                              "groupName": self.s.build_log_group},
                           "s3Logs": {"status": "DISABLED"}},
            "cache": {"type": "LOCAL", "modes": ["LOCAL_DOCKER_LAYER_CACHE"]},
        }

    def find(self) -> _Found:
        projects = self.codebuild.batch_get_projects(names=[self.name]).get("projects") or []
        if not projects:
            return _Found(False)
        project = projects[0]
        tags = _tag_dict(project.get("tags"), "key", "value")
        return _Found(True, _managed(tags), project.get("arn", self.ctx.build_project_arn),
                      {"project": project, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        deadline = time.monotonic() + 90
        while True:
            try:
                project = self.codebuild.create_project(
                    name=self.name, tags=_tag_list(self.ctx.tags, "key", "value"),
                    **self.wanted())["project"]
                return project.get("arn", self.ctx.build_project_arn), []
            except ClientError as exc:
                if _code(exc) == "ResourceAlreadyExistsException":
                    return self.ctx.build_project_arn, []
                # A role created seconds ago is not yet assumable by CodeBuild (IAM is
                # eventually consistent): "CodeBuild is not authorized to perform: sts:AssumeRole".
                if (_code(exc) != "InvalidInputException" or "AssumeRole" not in str(exc)
                        or time.monotonic() > deadline):
                    raise
            time.sleep(5)

    def reconcile(self, found: _Found) -> list[str]:
        project, want = found.info["project"], self.wanted()
        changes = [key for key, value in want.items() if not _subset(value, project.get(key))]
        tags = found.info["tags"]
        if any(tags.get(k) != v for k, v in self.ctx.tags.items()):
            changes.append("tags")
        if changes:
            self.codebuild.update_project(
                name=self.name, tags=_tag_list({**tags, **self.ctx.tags}, "key", "value"), **want)
        return changes

    def delete(self, found: _Found) -> None:
        try:
            self.codebuild.delete_project(name=self.name)
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise


def _kinds(ctx: _Ctx, head_ip: str | None = None) -> list[_Kind]:
    return [_Bucket(ctx), _Repository(ctx), _LogGroup(ctx), _ExecutionRole(ctx), _TaskRole(ctx),
            _Cluster(ctx), _SecurityGroup(ctx, head_ip), _BuildLogGroup(ctx), _BuildRole(ctx),
            _BuildProject(ctx)]


# --------------------------------------------------------------------------------------------
# the public operations


def _check_ip(head_ip: str) -> str:
    try:
        return str(ipaddress.ip_address(head_ip))
    except ValueError as exc:
        raise AwsSetupError(f"not an IP address: {head_ip!r}") from exc


def setup(session, settings: Settings, head_ip: str | None = None) -> SetupReport:
    """Create or find everything starburst needs in ``settings.region``; idempotent.

    ``head_ip``: the head's public address; the security group then admits it alone on the node
    port (rules for any other address are removed). Without it, existing single-host rules on the
    node port are kept and everything else is removed.
    Raises AwsSetupError, before creating anything, when credentials or the region don't work or
    a resource with one of starburst's names exists but isn't tagged as starburst's.
    """
    if head_ip is not None:
        head_ip = _check_ip(head_ip)
    ctx = _Ctx(session, settings)
    kinds = _kinds(ctx, head_ip)
    found = [k.find() for k in kinds]
    foreign = [f"{k.kind} {k.name}" for k, f in zip(kinds, found) if f.exists and not f.managed]
    if foreign:
        raise AwsSetupError(
            "these exist but aren't tagged as starburst's (" + MANAGED_TAG + "=true), so starburst "
            "won't take them over: " + "; ".join(foreign) + ". Choose another 'name' in "
            f"{Settings.path()} or remove them.")
    resources = [k.ensure(f) for k, f in zip(kinds, found)]
    resolved = dataclasses.replace(settings, bucket=ctx.bucket, extra=dict(settings.extra))
    return SetupReport(ctx.account, ctx.region, resolved, resources, _policy_documents(ctx))


def allow_head(session, settings: Settings, head_ip: str) -> Resource:
    """Point the security group at a new head address (the laptop moved); cheap when unchanged."""
    head_ip = _check_ip(head_ip)
    ctx = _Ctx(session, settings)
    sg = _SecurityGroup(ctx, head_ip)
    found = sg.find()
    if not found.exists or not found.managed:
        raise AwsSetupError(f"starburst's security group {sg.name} not found: run 'starburst setup'")
    return sg.ensure(found)


def teardown(session, settings: Settings, wait_timeout: float = 300.0) -> TeardownReport:
    """Remove everything ``setup()`` created; resources already gone are reported, not errors, and
    resources with starburst's names that aren't tagged as starburst's are left alone."""
    ctx = _Ctx(session, settings)
    resources = []
    # Reverse order: the cluster (and its tasks) before the roles, group and bucket they use.
    for kind in reversed(_kinds(ctx)):
        found = kind.find()
        if not found.exists:
            resources.append(Resource(kind.kind, kind.name, MISSING))
            continue
        if not found.managed:
            resources.append(Resource(kind.kind, kind.name, SKIPPED, found.arn))
            continue
        if isinstance(kind, (_Cluster, _SecurityGroup)):
            kind.delete(found, wait_timeout=wait_timeout)
        else:
            kind.delete(found)
        resources.append(Resource(kind.kind, kind.name, DELETED, found.arn))
    resources.sort(key=lambda r: KINDS.index(r.kind))
    return TeardownReport(ctx.account, ctx.region, resources)


def ensure_build_resources(session, settings: Settings) -> list[Resource]:
    """Create or find what an image build on CodeBuild needs (the build log group, role and
    project), as ``setup()`` does, for an account set up before these existed; cheap when they
    exist. Raises AwsSetupError when the bucket or the repository is missing (run setup) or a
    build resource exists but isn't starburst's."""
    ctx = _Ctx(session, settings)
    for base in (_Bucket(ctx), _Repository(ctx)):
        found = base.find()
        if not found.exists or not found.managed:
            raise AwsSetupError(f"starburst's {base.kind} {base.name} not found in {ctx.region}: "
                                "run 'starburst setup'")
    kinds = [k for k in _kinds(ctx) if k.kind in BUILD_KINDS]
    found = [k.find() for k in kinds]
    foreign = [f"{k.kind} {k.name}" for k, f in zip(kinds, found) if f.exists and not f.managed]
    if foreign:
        raise AwsSetupError("these exist but aren't tagged as starburst's (" + MANAGED_TAG
                            + "=true): " + "; ".join(foreign))
    return [k.ensure(f) for k, f in zip(kinds, found)]


def find_managed(session, settings: Settings) -> list[Resource]:
    """What exists of starburst's resources: status EXISTS, MISSING or UNMANAGED for each kind."""
    ctx = _Ctx(session, settings)
    out = []
    for kind in _kinds(ctx):
        found = kind.find()
        status = MISSING if not found.exists else EXISTS if found.managed else UNMANAGED
        detail = ""
        if found.exists and isinstance(kind, _SecurityGroup):
            rules = [r for r, _ in kind._rules(found.info["group"])]
            detail = "ingress " + (", ".join(f"{r[0]}/{r[1]} from {r[4]}" for r in rules) or "none")
        elif found.exists and isinstance(kind, _Cluster):
            c = found.info["cluster"]
            detail = f"{c.get('runningTasksCount', 0)} running, {c.get('pendingTasksCount', 0)} pending"
        out.append(Resource(kind.kind, kind.name, status, found.arn, detail))
    return out


__all__ = [
    "AwsSetupError", "Settings", "Resource", "SetupReport", "TeardownReport", "setup", "teardown",
    "find_managed", "allow_head", "ensure_build_resources", "MANAGED_TAG", "CLUSTER_TAG", "KINDS",
    "BUILD_KINDS", "BUILD_PREFIX", "BUILDERS", "CODEBUILD_ENVIRONMENTS",
    "CREATED", "EXISTED", "UPDATED", "DELETED", "MISSING", "EXISTS", "UNMANAGED", "SKIPPED",
]
