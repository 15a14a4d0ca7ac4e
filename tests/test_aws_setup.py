"""starburst's AWS resources: setup, idempotence, drift repair, teardown (against a moto server)."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from starburst.aws import provision
from starburst.aws import resources as res
from starburst.aws.resources import (
    CREATED,
    DELETED,
    EXISTED,
    EXISTS,
    KINDS,
    MISSING,
    SKIPPED,
    UPDATED,
)
from starburst.aws.settings import AwsSetupError, Settings

pytestmark = pytest.mark.slow  # moto/SeaweedFS servers and real processes: the full tier only

HEAD = "203.0.113.5"
NEW_HEAD = "198.51.100.7"
TAGS = {"starburst:managed": "true", "starburst:cluster": "starburst"}


def _policy(doc):
    return json.loads(doc) if isinstance(doc, str) else doc


def _tags(items, key="Key", value="Value"):
    return {t[key]: t[value] for t in items or []}


def _ingress(ec2, name="starburst-nodes"):
    """The security group's ingress rules as (protocol, from, to, source) tuples."""
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    assert len(groups) == 1, groups
    rules = []
    for p in groups[0]["IpPermissions"]:
        sources = ([r["CidrIp"] for r in p.get("IpRanges", [])]
                   + [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
                   + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])])
        rules += [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), s) for s in sources]
    return sorted(rules)


def _managed_roles(iam):
    names = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    return sorted(n for n in names
                  if _tags(iam.list_role_tags(RoleName=n)["Tags"]).get("starburst:managed") == "true")


def _active_clusters(ecs):
    # moto keeps a deleted cluster, INACTIVE, in list_clusters; AWS lists active ones only.
    arns = ecs.list_clusters()["clusterArns"]
    if not arns:
        return []
    return sorted(c["clusterArn"] for c in ecs.describe_clusters(clusters=arns)["clusters"]
                  if c["status"] == "ACTIVE")


def _inventory(aws, region="us-east-1"):
    """Everything in the account that setup could have made, to compare runs."""
    c = lambda name: aws.client(name, region)  # noqa: E731
    ec2 = c("ec2")
    return {
        "buckets": sorted(b["Name"] for b in c("s3").list_buckets()["Buckets"]),
        "repositories": sorted(r["repositoryName"] for r in c("ecr").describe_repositories()["repositories"]),
        "clusters": _active_clusters(c("ecs")),
        "roles": _managed_roles(c("iam")),
        "log_groups": sorted(g["logGroupName"] for g in c("logs").describe_log_groups()["logGroups"]),
        "security_groups": sorted(g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
                                  if g["GroupName"] != "default"),
        "build_projects": sorted(c("codebuild").list_projects()["projects"]),
        "ingress": _ingress(ec2) if any(
            g["GroupName"] == "starburst-nodes"
            for g in ec2.describe_security_groups()["SecurityGroups"]) else [],
    }


def test_settings_are_saved_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert Settings.load() == Settings(region="eu-west-1")  # no file yet: defaults
    s = Settings(region="us-west-2", node_port=47123, log_retention_days=30,
                 transient_expiry_days=3, extra={"workers": 50})
    assert s.save() == tmp_path / "aws.json"
    loaded = Settings.load()
    assert loaded == s and loaded.extra == {"workers": 50}
    assert json.loads((tmp_path / "aws.json").read_text())["workers"] == 50  # kept for others
    assert s.bucket_name("111122223333") == "starburst-111122223333-us-west-2"
    with pytest.raises(ValueError, match="retention"):
        Settings(log_retention_days=10)
    with pytest.raises(ValueError, match="name"):
        Settings(name="Star_burst")
    (tmp_path / "aws.json").write_text('{"node_port": 0}')
    with pytest.raises(AwsSetupError, match="node_port"):
        Settings.load()


def test_setup_creates_exactly_the_resources(aws):
    report = provision.setup(aws.session(), Settings(), head_ip=HEAD)
    bucket = f"starburst-{aws.account_id}-us-east-1"
    assert [r.kind for r in report.resources] == list(KINDS)
    assert report.statuses() == {k: CREATED for k in KINDS}
    assert report.settings.bucket == bucket and report.account_id == aws.account_id

    assert _inventory(aws) == {
        "buckets": [bucket],
        "repositories": ["starburst"],
        "clusters": [f"arn:aws:ecs:us-east-1:{aws.account_id}:cluster/starburst"],
        "roles": ["starburst-image-build-us-east-1", "starburst-task-execution-us-east-1",
                  "starburst-task-us-east-1"],
        "log_groups": ["/starburst/builds", "/starburst/nodes"],
        "security_groups": ["starburst-nodes"],
        "build_projects": ["starburst-image-build"],
        "ingress": [("tcp", 47000, 47000, f"{HEAD}/32")],
    }

    s3 = aws.client("s3")
    assert _tags(s3.get_bucket_tagging(Bucket=bucket)["TagSet"]) == TAGS
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                     "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in enc] == ["AES256"]
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Status"] == "Enabled" and rule["Filter"]["Prefix"] == "objects/"
    assert rule["Expiration"]["Days"] == 7
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]

    ecr = aws.client("ecr")
    [repo] = ecr.describe_repositories()["repositories"]
    assert _tags(ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]) == TAGS

    [cluster] = aws.client("ecs").describe_clusters(clusters=["starburst"], include=["TAGS"])["clusters"]
    assert sorted(cluster["capacityProviders"]) == ["FARGATE", "FARGATE_SPOT"]
    assert [s["capacityProvider"] for s in cluster["defaultCapacityProviderStrategy"]] == ["FARGATE"]
    assert _tags(cluster["tags"], "key", "value") == TAGS

    logs = aws.client("logs")
    [group] = logs.describe_log_groups(logGroupNamePrefix="/starburst/nodes")["logGroups"]
    assert group["retentionInDays"] == 14
    assert logs.list_tags_log_group(logGroupName="/starburst/nodes")["tags"] == TAGS

    ec2 = aws.client("ec2")
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    [sg] = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["starburst-nodes"]}])[
        "SecurityGroups"]
    assert sg["VpcId"] == vpc["VpcId"] and _tags(sg["Tags"]) == TAGS


def test_roles_are_least_privilege(aws):
    report = provision.setup(aws.session(), Settings(), head_ip=HEAD)
    iam = aws.client("iam")
    bucket_arn = f"arn:aws:s3:::starburst-{aws.account_id}-us-east-1"
    log_arn = f"arn:aws:logs:us-east-1:{aws.account_id}:log-group:/starburst/nodes:*"
    policies = {}
    for role in ("starburst-task-us-east-1", "starburst-task-execution-us-east-1"):
        trust = _policy(iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])
        [stmt] = trust["Statement"]
        assert stmt["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert stmt["Action"] == "sts:AssumeRole"
        assert stmt["Condition"]["StringEquals"] == {"aws:SourceAccount": aws.account_id}
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["starburst"]
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
        assert _tags(iam.list_role_tags(RoleName=role)["Tags"]) == TAGS
        policies[role] = _policy(
            iam.get_role_policy(RoleName=role, PolicyName="starburst")["PolicyDocument"])

    task = policies["starburst-task-us-east-1"]
    assert task == {"Version": "2012-10-17", "Statement": [
        {"Sid": "ObjectStore", "Effect": "Allow",
         "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
         "Resource": f"{bucket_arn}/objects/*"},
        {"Sid": "ListObjectStore", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": bucket_arn,
         "Condition": {"StringLike": {"s3:prefix": ["objects/", "objects/*"]}}},
        {"Sid": "WriteLogs", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": log_arn},
    ]}
    # Nothing is allowed on any resource but the bucket prefix and the log group.
    for stmt in task["Statement"]:
        assert "*" not in json.dumps(stmt["Action"])
        assert stmt["Resource"] in (f"{bucket_arn}/objects/*", bucket_arn, log_arn)

    execution = policies["starburst-task-execution-us-east-1"]
    resources = {s["Sid"]: s["Resource"] for s in execution["Statement"]}
    assert resources == {
        "EcrLogin": "*",  # GetAuthorizationToken has no resource-level permissions
        "PullImage": f"arn:aws:ecr:us-east-1:{aws.account_id}:repository/starburst",
        "WriteLogs": log_arn,
    }
    [login] = [s for s in execution["Statement"] if s["Sid"] == "EcrLogin"]
    assert login["Action"] == "ecr:GetAuthorizationToken"

    # The report carries the documents in force, for printing.
    assert report.policies["starburst-task-us-east-1 inline policy 'starburst'"] == task
    assert report.policies["starburst-task-execution-us-east-1 inline policy 'starburst'"] == execution
    text = report.format(policies=True)
    assert "ObjectStore" in text and "already existed" not in text


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_setup_twice_changes_nothing(aws, region):
    session = aws.session(region)
    first = provision.setup(session, Settings(region=region), head_ip=HEAD)
    assert first.changed
    before = _inventory(aws, region)
    second = provision.setup(session, Settings(region=region), head_ip=HEAD)
    assert second.statuses() == {k: EXISTED for k in KINDS}, second.format()
    assert not second.changed and all(r.detail == "" for r in second.resources)
    assert _inventory(aws, region) == before
    assert before["buckets"] == [f"starburst-{aws.account_id}-{region}"]
    assert second.policies == first.policies
    if region != "us-east-1":
        location = aws.client("s3", region).get_bucket_location(Bucket=before["buckets"][0])
        assert location["LocationConstraint"] == region


def test_head_address_change_replaces_the_rule(aws):
    session, settings = aws.session(), Settings()
    provision.setup(session, settings, head_ip=HEAD)
    ec2 = aws.client("ec2")

    report = provision.setup(session, settings, head_ip=NEW_HEAD)
    sg = report[res.SECURITY_GROUP]
    assert sg.status == UPDATED and HEAD in sg.detail and NEW_HEAD in sg.detail
    assert [r.kind for r in report.resources if r.status != EXISTED] == [res.SECURITY_GROUP]
    assert _ingress(ec2) == [("tcp", 47000, 47000, f"{NEW_HEAD}/32")]

    # Rules someone added by hand go; without an address the head's rule stays.
    [gid] = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
             if g["GroupName"] == "starburst-nodes"]
    ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 47000, "ToPort": 47000,
         "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    assert len(_ingress(ec2)) == 3
    report = provision.setup(session, settings)
    assert report[res.SECURITY_GROUP].status == UPDATED
    assert _ingress(ec2) == [("tcp", 47000, 47000, f"{NEW_HEAD}/32")]

    # The launcher's cheap path for a head that moved.
    assert provision.allow_head(session, settings, HEAD).status == UPDATED
    assert _ingress(ec2) == [("tcp", 47000, 47000, f"{HEAD}/32")]
    assert provision.allow_head(session, settings, HEAD).status == EXISTED
    with pytest.raises(AwsSetupError, match="not an IP address"):
        provision.setup(session, settings, head_ip="my-laptop")


def test_setup_repairs_drift(aws):
    session, settings = aws.session(), Settings()
    provision.setup(session, settings, head_ip=HEAD)
    bucket = f"starburst-{aws.account_id}-us-east-1"
    s3, iam, logs, ecs = (aws.client(n) for n in ("s3", "iam", "logs", "ecs"))
    s3.delete_bucket_encryption(Bucket=bucket)
    s3.delete_public_access_block(Bucket=bucket)
    s3.delete_bucket_lifecycle(Bucket=bucket)
    logs.put_retention_policy(logGroupName="/starburst/nodes", retentionInDays=3653)
    role = "starburst-task-us-east-1"
    wide = iam.create_policy(PolicyName="everything", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=wide)
    iam.put_role_policy(RoleName=role, PolicyName="extra", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    ecs.put_cluster_capacity_providers(cluster="starburst", capacityProviders=["FARGATE"],
                                       defaultCapacityProviderStrategy=[])

    report = provision.setup(session, settings, head_ip=HEAD)
    assert report.statuses() == {
        res.BUCKET: UPDATED, res.REPOSITORY: EXISTED, res.LOG_GROUP: UPDATED,
        res.EXECUTION_ROLE: EXISTED, res.TASK_ROLE: UPDATED, res.ECS_CLUSTER: UPDATED,
        res.SECURITY_GROUP: EXISTED, res.BUILD_LOG_GROUP: EXISTED, res.BUILD_ROLE: EXISTED,
        res.BUILD_PROJECT: EXISTED}, report.format()
    assert "default encryption" in report[res.BUCKET].detail
    assert "lifecycle rule" in report[res.BUCKET].detail
    assert "public access block" in report[res.BUCKET].detail
    assert s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"][
        "RestrictPublicBuckets"] is True
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 1
    [group] = logs.describe_log_groups(logGroupNamePrefix="/starburst/nodes")["logGroups"]
    assert group["retentionInDays"] == 14
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["starburst"]
    [cluster] = ecs.describe_clusters(clusters=["starburst"])["clusters"]
    assert sorted(cluster["capacityProviders"]) == ["FARGATE", "FARGATE_SPOT"]
    assert provision.setup(session, settings, head_ip=HEAD).changed is False


def test_teardown_removes_everything_and_is_idempotent(aws):
    session, settings = aws.session(), Settings()
    provision.setup(session, settings, head_ip=HEAD)
    bucket = f"starburst-{aws.account_id}-us-east-1"
    s3, ecs = aws.client("s3"), aws.client("ecs")
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"objects/{i}", Body=b"x" * 100)
    s3.put_object(Bucket=bucket, Key="elsewhere/file", Body=b"y")
    s3.create_multipart_upload(Bucket=bucket, Key="objects/partial")
    ours = ecs.register_task_definition(
        family="starburst-node-4x8", containerDefinitions=[{"name": "node", "image": "img", "memory": 512}],
        tags=[{"key": k, "value": v} for k, v in TAGS.items()])["taskDefinition"]["taskDefinitionArn"]
    theirs = ecs.register_task_definition(
        family="starburst-theirs", containerDefinitions=[{"name": "x", "image": "img", "memory": 512}],
    )["taskDefinition"]["taskDefinitionArn"]
    assert {r.status for r in provision.find_managed(session, settings)} == {EXISTS}

    report = provision.teardown(session, settings)
    assert [r.kind for r in report.resources] == list(KINDS)
    assert report.statuses() == {k: DELETED for k in KINDS}, report.format()

    with pytest.raises(ClientError) as err:
        s3.head_bucket(Bucket=bucket)
    assert err.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
    with pytest.raises(ClientError, match="RepositoryNotFound"):
        aws.client("ecr").describe_repositories(repositoryNames=["starburst"])
    clusters = ecs.describe_clusters(clusters=["starburst"])["clusters"]
    assert all(c["status"] == "INACTIVE" for c in clusters)
    assert _active_clusters(ecs) == []
    assert ecs.describe_task_definition(taskDefinition=ours)["taskDefinition"]["status"] == "INACTIVE"
    assert ecs.describe_task_definition(taskDefinition=theirs)["taskDefinition"]["status"] == "ACTIVE"
    iam = aws.client("iam")
    for role in ("starburst-task-us-east-1", "starburst-task-execution-us-east-1"):
        with pytest.raises(ClientError, match="NoSuchEntity"):
            iam.get_role(RoleName=role)
    assert aws.client("logs").describe_log_groups(logGroupNamePrefix="/starburst")["logGroups"] == []
    assert [g["GroupName"] for g in aws.client("ec2").describe_security_groups()["SecurityGroups"]] == [
        "default"]
    assert _inventory(aws) == {"buckets": [], "repositories": [], "clusters": [], "roles": [],
                               "log_groups": [], "security_groups": [], "build_projects": [],
                               "ingress": []}

    again = provision.teardown(session, settings)
    assert again.statuses() == {k: MISSING for k in KINDS}
    assert {r.status for r in provision.find_managed(session, settings)} == {MISSING}
    # And setup after teardown builds it all again.
    assert provision.setup(session, settings, head_ip=HEAD).statuses() == {k: CREATED for k in KINDS}


def test_resources_not_tagged_as_starburst_are_left_alone(aws):
    session, settings = aws.session(), Settings()
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="starburst")  # someone else's, same name
    with pytest.raises(AwsSetupError, match="ecr-repository starburst"):
        provision.setup(session, settings, head_ip=HEAD)
    assert aws.client("s3").list_buckets()["Buckets"] == []  # refused before creating anything
    found = {r.kind: r.status for r in provision.find_managed(session, settings)}
    assert found[res.REPOSITORY] == res.UNMANAGED and found[res.BUCKET] == MISSING

    report = provision.teardown(session, settings)
    assert report[res.REPOSITORY].status == SKIPPED
    assert [r["repositoryName"] for r in ecr.describe_repositories()["repositories"]] == ["starburst"]


def test_missing_credentials_are_a_clear_error(aws, monkeypatch):
    import boto3

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    with pytest.raises(AwsSetupError, match="no AWS credentials"):
        provision.setup(boto3.Session(), Settings(), head_ip=HEAD)
    with pytest.raises(AwsSetupError, match="no AWS credentials"):
        provision.teardown(boto3.Session(), Settings())
    with pytest.raises(AwsSetupError, match="no AWS credentials"):
        provision.find_managed(boto3.Session(), Settings())


def test_task_policies_asked_for_are_attached_and_only_those(aws):
    """task_policy_arns: what the user's task code may do in AWS (say, read their data buckets)."""
    iam = aws.client("iam")

    def policy(name, action):
        doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}
        return iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(doc))["Policy"]["Arn"]

    read_s3, read_ddb = policy("ReadMyData", "s3:GetObject"), policy("ReadMyTables", "dynamodb:GetItem")
    missing = f"arn:aws:iam::{aws.account_id}:policy/NoSuchPolicy"
    with pytest.raises(AwsSetupError, match="NoSuchPolicy does not exist"):
        provision.setup(aws.session(), Settings(task_policy_arns=[missing]), head_ip=HEAD)
    settings = Settings(task_policy_arns=[read_s3])
    report = provision.setup(aws.session(), settings, head_ip=HEAD)

    def attached(role):
        return sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])

    assert attached(settings.task_role) == [read_s3]
    assert attached(settings.execution_role) == []  # the others stay least privilege
    assert "attached managed policies" in report.format(policies=True)
    assert not provision.setup(aws.session(), settings, head_ip=HEAD).changed  # idempotent
    changed = provision.setup(aws.session(), Settings(task_policy_arns=[read_ddb]), head_ip=HEAD)
    assert attached(settings.task_role) == [read_ddb]
    assert "detached ReadMyData" in changed.format() and "attached ReadMyTables" in changed.format()
    with pytest.raises(ValueError, match="managed policy ARNs"):
        Settings(task_policy_arns=["AmazonS3ReadOnlyAccess"])
    provision.teardown(aws.session(), settings)
    with pytest.raises(ClientError):
        iam.get_role(RoleName=settings.task_role)
