"""One run against one AWS account and region: the caller's identity (one message for missing
credentials, whatever the command), clients, and the ARNs of starburst's resources."""

from __future__ import annotations

from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from ._errors import error_code as _code
from .settings import CLUSTER_TAG, MANAGED_TAG, AwsSetupError, Settings

#: What every command says when there are no AWS credentials.
NO_CREDENTIALS = ("no AWS credentials found: configure them ('aws configure', AWS_PROFILE, or "
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and run this again")

_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})


def caller_identity(session, region: str) -> dict:
    """STS ``GetCallerIdentity`` for ``session`` in ``region``; AwsSetupError saying what to do when
    there are no credentials, AWS can't be reached, or it refuses them."""
    try:
        return session.client("sts", region_name=region, config=_CLIENT_CONFIG).get_caller_identity()
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise AwsSetupError(NO_CREDENTIALS) from exc
    except EndpointConnectionError as exc:
        raise AwsSetupError(f"can't reach AWS in region {region}: {exc}") from exc
    except ClientError as exc:
        raise AwsSetupError(f"AWS refused the credentials ({_code(exc)}): "
                            f"{exc.response.get('Error', {}).get('Message', exc)}") from exc


class Context:
    """One run against one account and region: clients, identity, derived names."""

    def __init__(self, session, settings: Settings):
        self.session = session
        self.settings = settings
        self.region = settings.region
        self._clients: dict[str, Any] = {}
        ident = caller_identity(session, self.region)
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




__all__ = ["Context", "NO_CREDENTIALS", "caller_identity"]
