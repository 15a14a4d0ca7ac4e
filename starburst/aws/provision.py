"""Setting up and tearing down starburst's AWS resources: plan, idempotent setup, teardown, listing.

``plan()`` reads the account and says what ``setup()`` would create or check, creating nothing.

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
                                                     engine (``starburst.aws.image``)

Every resource is tagged ``starburst:managed=true`` and ``starburst:cluster={name}``. A resource
with one of these names that is *not* tagged as starburst's is never adopted or deleted: setup
refuses (before creating anything) and teardown skips it."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass

from .codebuild import BuildLogGroup, BuildProject, BuildRole
from .context import Context
from .policies import policy_documents
from .resources import (
    BUCKET,
    BUILD_KINDS,
    BUILD_LOG_GROUP,
    BUILD_PROJECT,
    BUILD_ROLE,
    DELETED,
    ECS_CLUSTER,
    EXECUTION_ROLE,
    EXISTED,
    EXISTS,
    KINDS,
    LOG_GROUP,
    MISSING,
    REPOSITORY,
    SECURITY_GROUP,
    SKIPPED,
    TASK_ROLE,
    UNMANAGED,
    Bucket,
    Cluster,
    ExecutionRole,
    Kind,
    LogGroup,
    Repository,
    Resource,
    SecurityGroup,
    TaskRole,
)
from .settings import MANAGED_TAG, AwsSetupError, Settings


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


#: What each kind of resource is for, in a plan.
_PURPOSE = {
    BUCKET: "private (public access blocked, ACLs disabled), SSE-S3, objects under the object "
            "prefix expire",
    REPOSITORY: "worker images",
    LOG_GROUP: "the nodes' logs, with a retention period",
    EXECUTION_ROLE: "lets ECS pull the node image and write the node log group",
    TASK_ROLE: "what node code may do: the object store prefix, the log group",
    ECS_CLUSTER: "FARGATE and FARGATE_SPOT capacity providers",
    SECURITY_GROUP: "default VPC; ingress only from the head's address on the node port",
    BUILD_LOG_GROUP: "the image builds' logs, with a retention period",
    BUILD_ROLE: "lets CodeBuild read build contexts, push to the repository, write the build logs",
    BUILD_PROJECT: "builds worker images without a local Docker engine",
}
WILL_CREATE = "will be created"
WILL_CHECK = "exists: setup checks its settings and corrects any that differ"
WILL_REFUSE = "exists, not starburst's: setup refuses"


@dataclass
class Plan:
    """What ``setup()`` would do, found by reading the account only (``plan()`` changes nothing)."""

    account_id: str
    region: str
    tags: dict[str, str]
    resources: list[Resource]
    #: The IAM policy documents setup puts in force, by name.
    policies: dict[str, dict]

    def to_create(self) -> list[Resource]:
        return [r for r in self.resources if r.status == WILL_CREATE]

    def format(self) -> str:
        tags = ", ".join(f"{k}={v}" for k, v in self.tags.items())
        lines = [(f"starburst setup plan for account {self.account_id}, region {self.region} "
                 f"(every resource tagged {tags}):")]
        for r in self.resources:
            lines.append(f"  {r.kind:<19} {r.name:<40} {r.status}")
            lines.append(f"  {'':<19} {r.detail}")
        for name, doc in self.policies.items():
            lines.append(f"\n{name}:")
            lines.append(json.dumps(doc, indent=2))
        return "\n".join(lines)


def plan(session, settings: Settings, head_ip: str | None = None) -> Plan:
    """Every resource ``setup()`` would create or check, with its type, name, region, tags and the
    policies it would carry; reads the account and creates nothing. Raises AwsSetupError when the
    credentials or the region don't work."""
    if head_ip is not None:
        head_ip = _check_ip(head_ip)
    ctx = Context(session, settings)
    resources = []
    for kind in all_kinds(ctx, head_ip):
        found = kind.find()
        status = WILL_CREATE if not found.exists else WILL_CHECK if found.managed else WILL_REFUSE
        detail = _PURPOSE[kind.kind]
        if kind.kind == SECURITY_GROUP:
            detail += f" (port {settings.node_port}, " + (f"{head_ip}/32)" if head_ip else "no head address yet)")
        resources.append(Resource(kind.kind, kind.name, status, found.arn, detail))
    return Plan(ctx.account, ctx.region, dict(ctx.tags), resources, policy_documents(ctx))


def all_kinds(ctx: Context, head_ip: str | None = None) -> list[Kind]:
    return [Bucket(ctx), Repository(ctx), LogGroup(ctx), ExecutionRole(ctx), TaskRole(ctx),
            Cluster(ctx), SecurityGroup(ctx, head_ip), BuildLogGroup(ctx), BuildRole(ctx),
            BuildProject(ctx)]


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
    ctx = Context(session, settings)
    kinds = all_kinds(ctx, head_ip)
    found = [k.find() for k in kinds]
    foreign = [f"{k.kind} {k.name}" for k, f in zip(kinds, found) if f.exists and not f.managed]
    if foreign:
        raise AwsSetupError(
            "these exist but aren't tagged as starburst's (" + MANAGED_TAG + "=true), so starburst "
            "won't take them over: " + "; ".join(foreign) + ". Choose another 'name' in "
            f"{Settings.path()} or remove them.")
    resources = [k.ensure(f) for k, f in zip(kinds, found)]
    resolved = dataclasses.replace(settings, bucket=ctx.bucket, extra=dict(settings.extra))
    return SetupReport(ctx.account, ctx.region, resolved, resources, policy_documents(ctx))


def allow_head(session, settings: Settings, head_ip: str) -> Resource:
    """Point the security group at a new head address (the laptop moved); cheap when unchanged."""
    head_ip = _check_ip(head_ip)
    ctx = Context(session, settings)
    sg = SecurityGroup(ctx, head_ip)
    found = sg.find()
    if not found.exists or not found.managed:
        raise AwsSetupError(f"starburst's security group {sg.name} not found: run 'starburst setup'")
    return sg.ensure(found)


def teardown(session, settings: Settings, wait_timeout: float = 300.0) -> TeardownReport:
    """Remove everything ``setup()`` created; resources already gone are reported, not errors, and
    resources with starburst's names that aren't tagged as starburst's are left alone."""
    ctx = Context(session, settings)
    resources = []
    # Reverse order: the cluster (and its tasks) before the roles, group and bucket they use.
    for kind in reversed(all_kinds(ctx)):
        found = kind.find()
        if not found.exists:
            resources.append(Resource(kind.kind, kind.name, MISSING))
            continue
        if not found.managed:
            resources.append(Resource(kind.kind, kind.name, SKIPPED, found.arn))
            continue
        if isinstance(kind, (Cluster, SecurityGroup)):
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
    ctx = Context(session, settings)
    for base in (Bucket(ctx), Repository(ctx)):
        have = base.find()
        if not have.exists or not have.managed:
            raise AwsSetupError(f"starburst's {base.kind} {base.name} not found in {ctx.region}: "
                                "run 'starburst setup'")
    kinds = [k for k in all_kinds(ctx) if k.kind in BUILD_KINDS]
    found = [k.find() for k in kinds]
    foreign = [f"{k.kind} {k.name}" for k, f in zip(kinds, found) if f.exists and not f.managed]
    if foreign:
        raise AwsSetupError("these exist but aren't tagged as starburst's (" + MANAGED_TAG
                            + "=true): " + "; ".join(foreign))
    return [k.ensure(f) for k, f in zip(kinds, found)]


def find_managed(session, settings: Settings) -> list[Resource]:
    """What exists of starburst's resources: status EXISTS, MISSING or UNMANAGED for each kind."""
    ctx = Context(session, settings)
    out = []
    for kind in all_kinds(ctx):
        found = kind.find()
        status = MISSING if not found.exists else EXISTS if found.managed else UNMANAGED
        detail = ""
        if found.exists and isinstance(kind, SecurityGroup):
            rules = [r for r, _ in kind._rules(found.info["group"])]
            detail = "ingress " + (", ".join(f"{r[0]}/{r[1]} from {r[4]}" for r in rules) or "none")
        elif found.exists and isinstance(kind, Cluster):
            c = found.info["cluster"]
            detail = f"{c.get('runningTasksCount', 0)} running, {c.get('pendingTasksCount', 0)} pending"
        out.append(Resource(kind.kind, kind.name, status, found.arn, detail))
    return out



__all__ = ["Plan", "plan", "SetupReport", "TeardownReport", "setup", "teardown", "find_managed", "allow_head",
           "ensure_build_resources", "all_kinds"]
