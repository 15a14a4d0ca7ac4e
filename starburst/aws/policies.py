"""The IAM policy documents of starburst's roles: who may assume them (trust) and what they may
do (the one inline policy each), least privilege; and comparing documents by meaning."""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from .settings import BUILD_PREFIX

if TYPE_CHECKING:
    from .context import Context

INLINE_POLICY_NAME = "starburst"


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


def same_policy(a: Any, b: Any) -> bool:
    return _canonical(_decode_policy(a)) == _canonical(_decode_policy(b))

def trust_policy(ctx: Context) -> dict:
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


def execution_policy(ctx: Context) -> dict:
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


def task_policy(ctx: Context) -> dict:
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


def build_trust_policy(ctx: Context) -> dict:
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


def build_policy(ctx: Context) -> dict:
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


def policy_documents(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {
        f"{s.execution_role} trust policy": trust_policy(ctx),
        f"{s.execution_role} inline policy '{INLINE_POLICY_NAME}'": execution_policy(ctx),
        f"{s.task_role} trust policy": trust_policy(ctx),
        f"{s.task_role} inline policy '{INLINE_POLICY_NAME}'": task_policy(ctx),
        f"{s.build_role} trust policy": build_trust_policy(ctx),
        f"{s.build_role} inline policy '{INLINE_POLICY_NAME}'": build_policy(ctx),
        **({f"{s.task_role} attached managed policies (task_policy_arns)": list(s.task_policy_arns)}
           if s.task_policy_arns else {}),
    }



__all__ = ["INLINE_POLICY_NAME", "trust_policy", "execution_policy", "task_policy",
           "build_trust_policy", "build_policy", "policy_documents", "same_policy"]
