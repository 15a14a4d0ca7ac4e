"""starburst's AWS resources, one class per kind: find it (does it exist? is it starburst's?),
create it, bring it to the wanted state, delete it. ``starburst.aws.provision`` runs them
(setup, plan, teardown); the CodeBuild kinds live in ``starburst.aws.codebuild``."""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ._errors import error_code as _code
from .context import Context
from .policies import (
    INLINE_POLICY_NAME,
    execution_policy,
    same_policy,
    task_policy,
    trust_policy,
)
from .settings import AwsSetupError, Settings, is_managed, tag_dict, tag_list

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


CAPACITY_PROVIDERS = ("FARGATE", "FARGATE_SPOT")
DEFAULT_CAPACITY_STRATEGY = [{"capacityProvider": "FARGATE", "weight": 1, "base": 0}]
LIFECYCLE_RULE_ID = "starburst-transient-expiry"
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"


@dataclass
class Resource:
    """One resource in a report: its kind, name and what happened to it (a status above)."""

    kind: str
    name: str
    status: str
    arn: str = ""
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"  {self.kind:<19} {self.name:<40} {self.status}{detail}"



@dataclass
class Found:
    exists: bool
    managed: bool = False
    arn: str = ""
    info: Any = None


class Kind:
    kind = ""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.s = ctx.settings

    @property
    def name(self) -> str:
        raise NotImplementedError

    def find(self) -> Found:
        raise NotImplementedError

    def create(self) -> tuple[str, list[str]]:
        """Create it; returns (arn, notes)."""
        raise NotImplementedError

    def reconcile(self, found: Found) -> list[str]:
        """Bring an existing one to the wanted state; returns what was changed."""
        return []

    def delete(self, found: Found) -> None:
        raise NotImplementedError

    def ensure(self, found: Found) -> Resource:
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


class Bucket(Kind):
    kind = BUCKET

    @property
    def name(self) -> str:
        return self.ctx.bucket

    @property
    def s3(self):
        return self.ctx.client("s3")

    def find(self) -> Found:
        try:
            self.s3.head_bucket(Bucket=self.name)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                return Found(False)
            if _code(exc) in ("403", "AccessDenied", "Forbidden"):
                raise AwsSetupError(
                    f"the S3 bucket {self.name} exists but this account can't use it (bucket "
                    f"names are global): set another 'bucket' in {Settings.path()}") from exc
            raise
        try:
            tags = tag_dict(self.s3.get_bucket_tagging(Bucket=self.name)["TagSet"])
        except ClientError as exc:
            if _code(exc) != "NoSuchTagSet":
                raise
            tags = {}
        return Found(True, is_managed(tags), self.ctx.bucket_arn, tags)

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
        self.s3.put_bucket_tagging(Bucket=self.name, Tagging={"TagSet": tag_list(self.ctx.tags)})
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

    def reconcile(self, found: Found) -> list[str]:
        s3, b, changes = self.s3, self.name, []
        tags = found.info or {}
        if any(tags.get(k) != v for k, v in self.ctx.tags.items()):
            s3.put_bucket_tagging(Bucket=b, Tagging={"TagSet": tag_list({**tags, **self.ctx.tags})})
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

    def delete(self, found: Found) -> None:
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


class Repository(Kind):
    kind = REPOSITORY

    @property
    def name(self) -> str:
        return self.s.repository

    @property
    def ecr(self):
        return self.ctx.client("ecr")

    def find(self) -> Found:
        try:
            repo = self.ecr.describe_repositories(repositoryNames=[self.name])["repositories"][0]
        except ClientError as exc:
            if _code(exc) == "RepositoryNotFoundException":
                return Found(False)
            raise
        tags = tag_dict(self.ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"])
        return Found(True, is_managed(tags), repo["repositoryArn"], tags)

    def create(self) -> tuple[str, list[str]]:
        repo = self.ecr.create_repository(
            repositoryName=self.name, tags=tag_list(self.ctx.tags),
            encryptionConfiguration={"encryptionType": "AES256"})["repository"]
        return repo["repositoryArn"], []

    def reconcile(self, found: Found) -> list[str]:
        if any((found.info or {}).get(k) != v for k, v in self.ctx.tags.items()):
            self.ecr.tag_resource(resourceArn=found.arn, tags=tag_list(self.ctx.tags))
            return ["tags"]
        return []

    def delete(self, found: Found) -> None:
        try:
            self.ecr.delete_repository(repositoryName=self.name, force=True)
        except ClientError as exc:
            if _code(exc) != "RepositoryNotFoundException":
                raise


class LogGroup(Kind):
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

    def find(self) -> Found:
        groups = self.logs.describe_log_groups(logGroupNamePrefix=self.name)["logGroups"]
        group = next((g for g in groups if g["logGroupName"] == self.name), None)
        if group is None:
            return Found(False)
        tags = self.logs.list_tags_log_group(logGroupName=self.name).get("tags", {})
        return Found(True, is_managed(tags), self.group_arn, {"group": group, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        try:
            self.logs.create_log_group(logGroupName=self.name, tags=dict(self.ctx.tags))
        except ClientError as exc:
            if _code(exc) != "ResourceAlreadyExistsException":
                raise
        return self.group_arn, []

    def reconcile(self, found: Found) -> list[str]:
        changes = []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.logs.tag_log_group(logGroupName=self.name, tags=dict(self.ctx.tags))
            changes.append("tags")
        if found.info["group"].get("retentionInDays") != self.s.log_retention_days:
            self.logs.put_retention_policy(logGroupName=self.name,
                                           retentionInDays=self.s.log_retention_days)
            changes.append(f"retention {self.s.log_retention_days} days")
        return changes

    def ensure(self, found: Found) -> Resource:
        res = super().ensure(found)
        if res.status == CREATED:  # the retention set right after creation is part of creating
            res.detail = f"retention {self.s.log_retention_days} days"
        return res

    def delete(self, found: Found) -> None:
        try:
            self.logs.delete_log_group(logGroupName=self.name)
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise


class Role(Kind):
    description = ""

    def policy(self) -> dict:
        raise NotImplementedError

    def trust(self) -> dict:
        return trust_policy(self.ctx)

    def attached(self) -> list[str]:
        """Managed policies the role should have attached (none: least privilege by default)."""
        return []

    @property
    def iam(self):
        return self.ctx.client("iam")

    def find(self) -> Found:
        try:
            role = self.iam.get_role(RoleName=self.name)["Role"]
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                return Found(False)
            raise
        tags = tag_dict(self.iam.list_role_tags(RoleName=self.name).get("Tags"))
        return Found(True, is_managed(tags), role["Arn"], {"role": role, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        role = self.iam.create_role(
            RoleName=self.name, Description=self.description,
            AssumeRolePolicyDocument=json.dumps(self.trust()),
            Tags=tag_list(self.ctx.tags))["Role"]
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

    def reconcile(self, found: Found) -> list[str]:
        iam, changes = self.iam, []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            iam.tag_role(RoleName=self.name, Tags=tag_list(self.ctx.tags))
            changes.append("tags")
        if not same_policy(found.info["role"]["AssumeRolePolicyDocument"], self.trust()):
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
        if current is None or not same_policy(current, self.policy()):
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

    def delete(self, found: Found) -> None:
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


class ExecutionRole(Role):
    kind = EXECUTION_ROLE
    description = "starburst: lets ECS pull the node image and write the node log group"

    @property
    def name(self) -> str:
        return self.s.execution_role

    def policy(self) -> dict:
        return execution_policy(self.ctx)


class TaskRole(Role):
    kind = TASK_ROLE
    description = "starburst: what node code may do (the object store prefix, the log group)"

    @property
    def name(self) -> str:
        return self.s.task_role

    def policy(self) -> dict:
        return task_policy(self.ctx)

    def attached(self) -> list[str]:
        return list(self.s.task_policy_arns)


class Cluster(Kind):
    kind = ECS_CLUSTER

    @property
    def name(self) -> str:
        return self.s.ecs_cluster

    @property
    def ecs(self):
        return self.ctx.client("ecs")

    def find(self) -> Found:
        resp = self.ecs.describe_clusters(clusters=[self.name], include=["TAGS"])
        live = [c for c in resp.get("clusters", []) if c.get("status") != "INACTIVE"]
        if not live:
            return Found(False)
        cluster = live[0]
        tags = tag_dict(cluster.get("tags"), "key", "value")
        return Found(True, is_managed(tags), cluster["clusterArn"], {"cluster": cluster, "tags": tags})

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
            clusterName=self.name, tags=tag_list(self.ctx.tags, "key", "value"),
            capacityProviders=list(CAPACITY_PROVIDERS),
            defaultCapacityProviderStrategy=DEFAULT_CAPACITY_STRATEGY)["cluster"]
        return cluster["clusterArn"], notes

    def reconcile(self, found: Found) -> list[str]:
        changes = []
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.ecs.tag_resource(resourceArn=found.arn,
                                  tags=tag_list(self.ctx.tags, "key", "value"))
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

    def delete(self, found: Found, wait_timeout: float = 300.0) -> None:
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
            if is_managed(tag_dict(desc.get("tags"), "key", "value")):
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


class SecurityGroup(Kind):
    kind = SECURITY_GROUP

    def __init__(self, ctx: Context, head_ip: str | None = None):
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

    def find(self) -> Found:
        vpc = self.vpc(required=False)
        if vpc is None:
            return Found(False)
        groups = self.ec2.describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": "group-name", "Values": [self.name]}])["SecurityGroups"]
        if not groups:
            return Found(False)
        group = groups[0]
        tags = tag_dict(group.get("Tags"))
        arn = self.ctx.arn("ec2", f"security-group/{group['GroupId']}")
        return Found(True, is_managed(tags), arn, {"group": group, "tags": tags})

    def create(self) -> tuple[str, list[str]]:
        gid = self.ec2.create_security_group(
            GroupName=self.name, VpcId=self.vpc(),
            Description="starburst nodes: only the head's address, on the node port",
            TagSpecifications=[{"ResourceType": "security-group",
                                "Tags": tag_list(self.ctx.tags)}])["GroupId"]
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

    def reconcile(self, found: Found) -> list[str]:
        changes = []
        gid = found.info["group"]["GroupId"]
        if any(found.info["tags"].get(k) != v for k, v in self.ctx.tags.items()):
            self.ec2.create_tags(Resources=[gid], Tags=tag_list(self.ctx.tags))
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

    def ensure(self, found: Found) -> Resource:
        res = super().ensure(found)
        if res.status == CREATED:
            wanted = self._wanted()
            res.detail = (f"ingress tcp/{self.s.node_port} from {wanted[4]}" if wanted
                          else "no ingress yet: no head address given")
        return res

    def delete(self, found: Found, wait_timeout: float = 300.0) -> None:
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




__all__ = ["Resource", "Found", "Kind", "Bucket", "Repository", "LogGroup", "Role", "ExecutionRole",
           "TaskRole", "Cluster", "SecurityGroup", "KINDS", "BUILD_KINDS", "BUCKET", "REPOSITORY",
           "LOG_GROUP", "EXECUTION_ROLE", "TASK_ROLE", "ECS_CLUSTER", "SECURITY_GROUP",
           "BUILD_LOG_GROUP", "BUILD_ROLE", "BUILD_PROJECT", "CREATED", "EXISTED", "UPDATED",
           "DELETED", "MISSING", "EXISTS", "UNMANAGED", "SKIPPED"]
