"""Building the worker image only when its tag is new: the ECR lookup, the CodeBuild project and
its submission (against a moto server), the local Docker builder (with a stand-in ``docker``
command: no engine runs here), the build context's wheels, and the Dockerfile's install steps run
for real in a throwaway virtualenv."""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import starburst
from starburst.aws import provision
from starburst.aws import resources as res
from starburst.aws.codebuild import BUILDSPEC, BuildProject
from starburst.aws.context import Context
from starburst.aws.image import (
    BuildError,
    BuildFailed,
    CodeBuildBuilder,
    ConsoleProgress,
    DockerBuilder,
    docker_build_command,
    docker_login_command,
    docker_push_command,
    ensure_image,
    image_exists,
    image_uri,
    prepare_context,
    start_build_request,
    zip_context,
)
from starburst.aws.resources import CREATED, DELETED, EXISTED, MISSING
from starburst.aws.settings import AwsSetupError, Settings
from starburst.envsync import build, build_context, derived_spec, parse
from starburst.envsync.wheels import (
    WheelError,
    build_wheel,
    repack_installed,
    source_lock,
    wheel_name_version,
)

pytestmark = pytest.mark.slow  # moto round trips or whole scripts through starburst run: the full tier

REPO = Path(starburst.__file__).resolve().parent.parent
STARBURST_URL = {"url": "https://example.com/starburst-0.1.0-py3-none-any.whl", "archive_info": {}}
MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
               "digest": "sha256:" + "a" * 64},
    "layers": []})


def small_spec(arch="x86_64", extra=()):
    """An environment whose image needs no wheels built (starburst from a URL)."""
    return build("3.11.7", arch, [("sbtest-alpha", "1.2.0", None), *extra,
                                  ("starburst", "0.1.0", STARBURST_URL)])


def push(aws, tag, repository="starburst"):
    """What a finished build leaves behind: the tag in ECR (a rebuild pushes the same again)."""
    ecr = aws.client("ecr")
    try:
        ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=MANIFEST)
    except ecr.exceptions.ImageAlreadyExistsException:
        pass


def set_up(aws):
    report = provision.setup(aws.session(), Settings(), head_ip="203.0.113.5")
    return report.settings


# -- names, buildspec, context ---------------------------------------------------------------------

def test_image_uri_is_the_repository_tagged_with_the_hash():
    spec = small_spec()
    assert image_uri(Settings(region="eu-west-1"), "111122223333", spec) == \
        f"111122223333.dkr.ecr.eu-west-1.amazonaws.com/starburst:{spec.hash()}"
    assert image_uri(Settings(region="cn-north-1", name="sb"), "1", spec) == \
        f"1.dkr.ecr.cn-north-1.amazonaws.com.cn/sb:{spec.hash()}"


def test_buildspec_logs_in_builds_for_the_platform_and_pushes():
    doc = yaml.safe_load(BUILDSPEC)
    assert str(doc["version"]) == "0.2"
    phases = doc["phases"]
    assert list(phases) == ["pre_build", "build", "post_build"]
    assert all(p["on-failure"] == "ABORT" for p in phases.values())
    login = " ".join(phases["pre_build"]["commands"])
    assert 'aws ecr get-login-password --region "$AWS_REGION"' in login
    assert 'docker login --username AWS --password-stdin "$REGISTRY"' in login
    assert phases["build"]["commands"] == ['docker build --platform "$PLATFORM" --tag "$IMAGE_URI" .']
    assert phases["post_build"]["commands"] == ['docker push "$IMAGE_URI"']
    assert doc["env"]["variables"]["DOCKER_BUILDKIT"] == "1"


def test_start_build_request_per_architecture():
    settings = Settings()
    spec = small_spec()
    uri = image_uri(settings, "123456789012", spec)
    req = start_build_request(settings, "bkt", spec, uri)
    assert req["projectName"] == "starburst-image-build"
    assert req["sourceLocationOverride"] == f"bkt/builds/{spec.hash()}.zip"
    env = {v["name"]: v["value"] for v in req["environmentVariablesOverride"]}
    assert env == {"IMAGE_URI": uri, "REGISTRY": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                   "PLATFORM": "linux/amd64", "ENV_HASH": spec.hash()}
    assert "environmentTypeOverride" not in req  # the project's own host is x86_64
    arm = small_spec("arm64")
    req = start_build_request(settings, "bkt", arm, image_uri(settings, "123456789012", arm))
    assert {v["name"]: v["value"] for v in req["environmentVariablesOverride"]}["PLATFORM"] == "linux/arm64"
    assert (req["environmentTypeOverride"], req["computeTypeOverride"]) == ("ARM_CONTAINER", "BUILD_GENERAL1_LARGE")
    assert "aarch64" in req["imageOverride"]


def test_zip_context_is_deterministic_and_complete(tmp_path):
    spec = small_spec()
    ctx = build_context(spec, tmp_path / "ctx")
    (ctx / "wheels").mkdir()  # an empty directory the Dockerfile COPYs must be there too
    one = zip_context(ctx, tmp_path / "one.zip").read_bytes()
    os.utime(ctx / "Dockerfile", (1, 1))
    two = zip_context(ctx, tmp_path / "two.zip").read_bytes()
    assert one == two
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        names = zf.namelist()
        assert zf.read("Dockerfile") == (ctx / "Dockerfile").read_bytes()
    assert sorted(names) == ["Dockerfile", "constraints.txt", "requirements.txt", "spec.json", "wheels/"]


# -- runtime_env pip -------------------------------------------------------------------------------

def test_derived_spec_from_runtime_env(tmp_path):
    base = small_spec()
    assert derived_spec(base, None) is base
    assert derived_spec(base, {"env_vars": {"A": "1"}, "working_dir": "."}) is base
    assert derived_spec(base, {"pip": []}) is base
    listed = derived_spec(base, {"pip": ["Requests==2.32.0"]})
    assert listed.hash() != base.hash() and listed.pip == ("requests==2.32.0",)
    assert listed.packages == base.packages
    assert derived_spec(base, {"pip": {"packages": ["requests==2.32.0"], "pip_check": False}}).hash() == listed.hash()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\nrequests==2.32.0  # http\n\n")
    assert derived_spec(base, {"pip": str(reqs)}).hash() == listed.hash()
    assert derived_spec(base, {"pip": ["requests==2.32.1"]}).hash() != listed.hash()
    for bad in ({"conda": {"dependencies": ["numpy"]}}, {"pip": {"packages": ["x"], "pip_version": "==23"}},
                {"pip": "/no/such/requirements.txt"}, {"pip": 3}, {"pip": ["--index-url http://x"]}):
        with pytest.raises(ValueError):
            derived_spec(base, bad)


# -- ECR -------------------------------------------------------------------------------------------

def test_image_exists_against_ecr(aws):
    ecr = aws.client("ecr")
    with pytest.raises(BuildError, match="starburst setup"):
        image_exists(ecr, "starburst", "0123456789abcdef")
    set_up(aws)
    spec = small_spec()
    assert image_exists(ecr, "starburst", spec.hash()) is False
    push(aws, spec.hash())
    assert image_exists(ecr, "starburst", spec.hash()) is True
    assert image_exists(ecr, "starburst", small_spec("arm64").hash()) is False


# -- setup / teardown of the build resources ------------------------------------------------------

def _policy(doc):
    return json.loads(doc) if isinstance(doc, str) else doc


def test_setup_makes_the_build_project_and_a_least_privilege_role(aws):
    settings = set_up(aws)
    account, bucket = aws.account_id, settings.bucket
    cb = aws.client("codebuild")
    [project] = cb.batch_get_projects(names=["starburst-image-build"])["projects"]
    assert project["source"] == {"type": "S3", "location": f"{bucket}/builds/", "buildspec": BUILDSPEC}
    assert project["artifacts"] == {"type": "NO_ARTIFACTS"}
    env = project["environment"]
    assert (env["type"], env["image"], env["privilegedMode"]) == \
        ("LINUX_CONTAINER", "aws/codebuild/standard:7.0", True)
    assert project["serviceRole"] == f"arn:aws:iam::{account}:role/starburst-image-build-us-east-1"
    assert project["logsConfig"]["cloudWatchLogs"] == {"status": "ENABLED", "groupName": "/starburst/builds"}
    assert {t["key"]: t["value"] for t in project["tags"]} == \
        {"starburst:managed": "true", "starburst:cluster": "starburst"}
    [group] = aws.client("logs").describe_log_groups(logGroupNamePrefix="/starburst/builds")["logGroups"]
    assert group["retentionInDays"] == 14

    iam = aws.client("iam")
    role = "starburst-image-build-us-east-1"
    [trust] = _policy(iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])["Statement"]
    assert trust["Principal"] == {"Service": "codebuild.amazonaws.com"}
    assert trust["Condition"] == {
        "StringEquals": {"aws:SourceAccount": account},
        "ArnLike": {"aws:SourceArn": f"arn:aws:codebuild:us-east-1:{account}:project/starburst-image-build"}}
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    policy = _policy(iam.get_role_policy(RoleName=role, PolicyName="starburst")["PolicyDocument"])
    logs = f"arn:aws:logs:us-east-1:{account}:log-group:/starburst/builds"
    assert {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]} == {
        "ReadBuildContext": (["s3:GetObject", "s3:GetObjectVersion"], f"arn:aws:s3:::{bucket}/builds/*"),
        "BuildSourceBucket": (["s3:GetBucketAcl", "s3:GetBucketLocation"], f"arn:aws:s3:::{bucket}"),
        "EcrLogin": ("ecr:GetAuthorizationToken", "*"),
        "PushImage": (["ecr:BatchCheckLayerAvailability", "ecr:CompleteLayerUpload",
                       "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
                      f"arn:aws:ecr:us-east-1:{account}:repository/starburst"),
        "WriteBuildLogs": (["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                           [logs, f"{logs}:*"]),
    }
    # nothing of the object store: the build reads builds/ only
    assert "objects" not in json.dumps(policy)


def test_build_resources_setup_teardown_idempotent(aws):
    session, settings = aws.session(), Settings()
    first = provision.setup(session, settings, head_ip="203.0.113.5")
    assert {k: first[k].status for k in res.BUILD_KINDS} == {k: CREATED for k in res.BUILD_KINDS}
    again = provision.setup(session, settings, head_ip="203.0.113.5")
    assert {k: again[k].status for k in res.BUILD_KINDS} == {k: EXISTED for k in res.BUILD_KINDS}
    assert [r.status for r in provision.ensure_build_resources(session, settings)] == [EXISTED] * 3

    # an account set up before the build resources existed: the image build makes them
    aws.client("codebuild").delete_project(name="starburst-image-build")
    made = {r.kind: r.status for r in provision.ensure_build_resources(session, settings)}
    assert made == {res.BUILD_LOG_GROUP: EXISTED, res.BUILD_ROLE: EXISTED, res.BUILD_PROJECT: CREATED}

    down = provision.teardown(session, settings)
    assert {k: down[k].status for k in res.BUILD_KINDS} == {k: DELETED for k in res.BUILD_KINDS}
    assert aws.client("codebuild").list_projects()["projects"] == []
    assert aws.client("logs").describe_log_groups(logGroupNamePrefix="/starburst")["logGroups"] == []
    down = provision.teardown(session, settings)
    assert {k: down[k].status for k in res.BUILD_KINDS} == {k: MISSING for k in res.BUILD_KINDS}
    with pytest.raises(AwsSetupError, match="starburst setup"):
        provision.ensure_build_resources(session, settings)


def test_build_project_drift_is_repaired(aws):
    settings = set_up(aws)
    ctx = Context(aws.session(), settings)
    calls = []

    class Recording:  # moto has no UpdateProject: record the call instead
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def update_project(self, **kwargs):
            calls.append(kwargs)

    ctx._clients["codebuild"] = Recording(ctx.client("codebuild"))
    kind = BuildProject(ctx)
    found = kind.find()
    assert found.exists and found.managed and kind.reconcile(found) == []
    found.info["project"]["environment"]["privilegedMode"] = False
    found.info["project"]["source"]["buildspec"] = "version: 0.2\n"
    found.info["tags"] = {}
    assert kind.reconcile(found) == ["source", "environment", "tags"]
    [call] = calls
    assert call["name"] == "starburst-image-build" and call["source"]["buildspec"] == BUILDSPEC
    assert call["environment"]["privilegedMode"] is True
    assert {t["key"] for t in call["tags"]} == {"starburst:managed", "starburst:cluster"}


def test_settings_builder_and_build_prefix():
    assert Settings().builder == "codebuild"
    assert Settings(builder="docker").builder == "docker"
    with pytest.raises(ValueError, match="builder"):
        Settings(builder="kaniko")
    with pytest.raises(ValueError, match="builds"):
        Settings(object_prefix="builds/objects")


# -- CodeBuild -------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_codebuild_submission_against_moto(aws, tmp_path):
    settings = set_up(aws)
    spec = small_spec()
    uri = image_uri(settings, aws.account_id, spec)
    ctx = build_context(spec, tmp_path / "ctx")
    builder = CodeBuildBuilder(aws.session(), settings, poll_interval=0)
    sent = []
    builder.client("codebuild").meta.events.register(
        "provide-client-params.codebuild.StartBuild", lambda params, **_: sent.append(dict(params)))
    lines = []
    build_id = builder.start(spec, ctx, uri, lines.append)

    # the context is in the bucket, under builds/<hash>.zip, as the zip CodeBuild unpacks
    key = f"builds/{spec.hash()}.zip"
    body = aws.client("s3").get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("Dockerfile") == (ctx / "Dockerfile").read_bytes()
    [request] = sent
    assert request == start_build_request(settings, settings.bucket, spec, uri)
    assert request["sourceLocationOverride"] == f"{settings.bucket}/{key}"
    assert aws.client("codebuild").list_builds_for_project(projectName="starburst-image-build")["ids"] == [build_id]
    assert any("uploading the build context" in line for line in lines)

    # moto completes every build at once (and pushes nothing)
    final = builder.wait(build_id, lines.append)
    assert final["buildStatus"] == "SUCCEEDED" and lines[-1] == "CodeBuild COMPLETED: done"


def _phases(*done, failed=None, message=""):
    out = [{"phaseType": p, "phaseStatus": "SUCCEEDED"} for p in done]
    if failed:
        out.append({"phaseType": failed, "phaseStatus": "FAILED",
                    "contexts": [{"statusCode": "COMMAND_EXECUTION_ERROR", "message": message}]})
    return out


def test_codebuild_failure_names_the_phase_and_shows_the_log_tail(aws, tmp_path):
    settings = set_up(aws)
    spec = small_spec()
    logs = aws.client("logs")
    logs.create_log_stream(logGroupName="/starburst/builds", logStreamName="run-1")
    log_lines = [f"step {i}" for i in range(100)] + ["ERROR: failed to solve: pip install exit code: 1"]
    logs.put_log_events(logGroupName="/starburst/builds", logStreamName="run-1",
                        logEvents=[{"timestamp": int(time.time() * 1000) - 1000 + i, "message": line}
                                   for i, line in enumerate(log_lines)])
    clock = FakeClock()
    build_id = "starburst-image-build:run-1"
    states = iter(
        [{"id": build_id, "currentPhase": "QUEUED", "buildStatus": "IN_PROGRESS"}] * 3
        + [{"id": build_id, "currentPhase": "BUILD", "buildStatus": "IN_PROGRESS"}] * 20
        + [{"id": build_id, "currentPhase": "COMPLETED", "buildStatus": "FAILED", "buildComplete": True,
            "phases": _phases("SUBMITTED", "QUEUED", "PROVISIONING", "DOWNLOAD_SOURCE", "INSTALL",
                              "PRE_BUILD", failed="BUILD",
                              message="Error while executing command: docker build. Reason: exit status 1"),
            "logs": {"groupName": "/starburst/builds", "streamName": "run-1",
                     "deepLink": "https://console.aws.amazon.com/cloudwatch/home#logEvent"}}])
    builder = CodeBuildBuilder(aws.session(), settings, poll=lambda _id: next(states), poll_interval=5,
                               heartbeat_s=30, sleep=clock.sleep, clock=clock, log_lines=20)
    out = io.StringIO()
    progress = ConsoleProgress(out, clock=clock)
    ctx = build_context(spec, tmp_path / "ctx")
    with pytest.raises(BuildFailed) as err:
        builder.build(spec, ctx, image_uri(settings, aws.account_id, spec), progress)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[  0.0s] uploading the build context")
    assert lines[2] == "[  0.0s] CodeBuild QUEUED: waiting for a build host"
    assert lines[3] == "[ 15.0s] CodeBuild BUILD: docker build"
    assert "[ 45.0s] CodeBuild BUILD: docker build, 45.0s since the start" in lines
    assert lines[-1].startswith("[ 1m55s] CodeBuild COMPLETED")
    exc = err.value
    assert (exc.phase, exc.status) == ("BUILD", "FAILED")
    assert exc.log_tail == log_lines[-20:]
    text = str(exc)
    assert "failed in phase BUILD (docker build): FAILED: Error while executing command" in text
    assert "| ERROR: failed to solve" in text and "| step 81" in text and "| step 80" not in text
    assert "full log: https://console.aws.amazon.com" in text
    # a failed build's context stays in the bucket, for a look
    assert aws.client("s3").list_objects_v2(Bucket=settings.bucket, Prefix="builds/")["KeyCount"] == 1


def test_codebuild_failure_without_a_log(aws):
    settings = set_up(aws)
    builder = CodeBuildBuilder(aws.session(), settings)
    exc = builder.failure({"id": "p:1", "buildStatus": "FAULT",
                           "phases": _phases("SUBMITTED", failed="PROVISIONING", message="no capacity")})
    assert exc.phase == "PROVISIONING" and "no capacity" in str(exc) and "no log lines" in str(exc)


def test_ensure_image_with_codebuild_end_to_end(aws):
    """ensure_image through the CodeBuild builder against moto; the push that moto's builds don't
    do is done by the injected poll when the build 'finishes'."""
    settings = set_up(aws)
    spec = small_spec()

    dockerfiles = []

    def poll(build_id):
        [b] = aws.client("codebuild").batch_get_builds(ids=[build_id])["builds"]
        body = aws.client("s3").get_object(Bucket=settings.bucket, Key=f"builds/{spec.hash()}.zip")["Body"]
        with zipfile.ZipFile(io.BytesIO(body.read())) as zf:
            dockerfiles.append(zf.read("Dockerfile").decode())
        push(aws, spec.hash())
        started = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)
        return {**b, "startTime": started, "endTime": started + datetime.timedelta(seconds=95)}

    lines = []
    builder = CodeBuildBuilder(aws.session(), settings, poll=poll)
    uri = ensure_image(aws.session(), settings, spec, builder=builder, progress=lines.append)
    assert uri == image_uri(settings, aws.account_id, spec)
    assert builder.build_seconds == 95  # what CodeBuild bills (per started minute: 2), for the cost meter
    assert lines[0].startswith(f"building {uri} with codebuild")
    assert lines[-1] == f"image ready: {uri}"
    # the context is removed after a successful build
    assert aws.client("s3").list_objects_v2(Bucket=settings.bucket, Prefix="builds/").get("KeyCount") == 0
    # the official base image, through its ECR Public mirror (no Docker Hub pull limits)
    assert parse(dockerfiles[0])[0] == \
        ("FROM", "--platform=linux/amd64 public.ecr.aws/docker/library/python:3.11-slim")
    # moto's own successful build pushes nothing: that is an error, not a silent success
    with pytest.raises(BuildError, match="not in ECR"):
        ensure_image(aws.session(), settings, small_spec("arm64"), builder="codebuild", progress=lines.append)


def test_ensure_image_builds_only_when_the_tag_is_new(aws):
    settings = set_up(aws)
    spec = small_spec()

    class Recorder:
        name = "recorder"
        base_registry = "mirror.example/library"

        def __init__(self):
            self.calls = []

        def build(self, spec, context_dir, image_uri, progress):
            self.calls.append((spec.hash(), image_uri, (Path(context_dir) / "Dockerfile").read_text()))
            progress("built")
            push(aws, spec.hash())

    rec = Recorder()
    uri = ensure_image(aws.session(), settings, spec, builder=rec, progress=lambda _: None)
    assert len(rec.calls) == 1 and rec.calls[0][:2] == (spec.hash(), uri)
    assert parse(rec.calls[0][2])[0] == ("FROM", "--platform=linux/amd64 mirror.example/library/python:3.11-slim")
    assert ensure_image(aws.session(), settings, spec, builder=rec, progress=lambda _: None) == uri
    assert len(rec.calls) == 1  # the tag exists: nothing built
    ensure_image(aws.session(), settings, spec, builder=rec, rebuild=True, progress=lambda _: None)
    assert len(rec.calls) == 2
    derived = derived_spec(spec, {"pip": ["requests==2.32.0"]})
    assert ensure_image(aws.session(), settings, derived, builder=rec, progress=lambda _: None).endswith(
        f":{derived.hash()}")
    assert len(rec.calls) == 3


def test_ensure_image_without_setup_or_credentials(aws, monkeypatch):
    with pytest.raises(BuildError, match="starburst setup"):
        ensure_image(aws.session(), Settings(), small_spec(), builder="docker", progress=lambda _: None)
    import boto3

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    with pytest.raises(BuildError, match="no AWS credentials"):
        ensure_image(boto3.Session(), Settings(), small_spec(), progress=lambda _: None)


# -- the local Docker builder ----------------------------------------------------------------------

def test_docker_commands():
    uri = "1.dkr.ecr.us-east-1.amazonaws.com/starburst:0123456789abcdef"
    assert docker_build_command("/ctx", uri, "linux/arm64") == \
        ["docker", "build", "--pull", "--platform", "linux/arm64", "--tag", uri, "/ctx"]
    assert docker_push_command(uri, docker="/usr/bin/docker") == ["/usr/bin/docker", "push", uri]
    assert docker_login_command("1.dkr.ecr.us-east-1.amazonaws.com") == \
        ["docker", "login", "--username", "AWS", "--password-stdin", "1.dkr.ecr.us-east-1.amazonaws.com"]


FAKE_DOCKER = '''\
#!{python}
"""A stand-in for the docker command: records its calls; 'push' puts the tag into (moto's) ECR."""
import json, os, sys

args = sys.argv[1:]
entry = {{"argv": args}}
if args[:1] == ["login"]:
    entry["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
if args[:1] == ["info"]:
    if os.environ.get("FAKE_DOCKER_ENGINE") == "down":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    print("28.2.2")
elif args[:1] == ["build"]:
    for i in range(60):
        print(f"#{{i}} step {{i}}")
    if os.environ.get("FAKE_DOCKER_FAIL") == "build":
        print("ERROR: failed to solve: process did not complete successfully: exit code: 1")
        sys.exit(1)
elif args[:1] == ["push"]:
    import boto3
    repo, tag = args[1].split("/", 1)[1].rsplit(":", 1)
    boto3.client("ecr").put_image(repositoryName=repo, imageTag=tag, imageManifest={manifest!r})
    print(f"{{tag}}: digest: sha256:0 size: 1")
'''


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    docker = bindir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, manifest=MANIFEST))
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return docker, calls


def test_docker_not_found_is_a_clear_error(aws, tmp_path, monkeypatch):
    set_up(aws)
    with pytest.raises(BuildError, match="docker command was not found on PATH.*CodeBuild"):
        DockerBuilder(docker="docker-that-does-not-exist").preflight()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BuildError, match="not found on PATH") as err:
        ensure_image(aws.session(), Settings.load(tmp_path / "none.json"), small_spec(), builder="docker",
                     progress=lambda _: None)
    assert "needs no local Docker" in str(err.value)


def test_docker_without_an_engine_is_a_clear_error(fake_docker, monkeypatch):
    docker, calls = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_ENGINE", "down")
    with pytest.raises(BuildError, match="no Docker engine answers.*Is the docker daemon running"):
        DockerBuilder(docker=str(docker)).preflight()
    assert [c["argv"][0] for c in calls()] == ["info"]


def test_docker_builder_logs_in_builds_and_pushes(aws, fake_docker):
    docker, calls = fake_docker
    settings = set_up(aws)
    spec = small_spec("arm64")
    lines = []
    builder = DockerBuilder(aws.session(), settings, docker=str(docker))
    uri = ensure_image(aws.session(), settings, spec, builder=builder, progress=lines.append)
    assert uri == image_uri(settings, aws.account_id, spec)
    argv = [c["argv"] for c in calls()]
    registry = uri.split("/")[0]
    assert [a[0] for a in argv] == ["info", "login", "build", "push"]
    assert argv[1] == ["login", "--username", "AWS", "--password-stdin", registry]
    assert calls()[1]["stdin"] == f"{aws.account_id}-auth-token"  # the token's password, on stdin only
    assert argv[2][:-1] == ["build", "--pull", "--platform", "linux/arm64", "--tag", uri]
    assert argv[3] == ["push", uri]
    assert "docker build | #59 step 59" in lines
    # the base image is Docker Hub's (no mirror for a local engine)
    assert image_exists(aws.client("ecr"), "starburst", spec.hash())


def test_docker_build_failure_shows_the_tail(aws, fake_docker, tmp_path, monkeypatch):
    docker, _ = fake_docker
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    builder = DockerBuilder(docker=str(docker), log_lines=5, echo=False)
    ctx = build_context(small_spec(), tmp_path / "ctx")
    with pytest.raises(BuildFailed) as err:
        builder.build(small_spec(), ctx, "r/starburst:x", lambda _: None)
    assert err.value.phase == "docker build" and err.value.status == "exit 1"
    assert err.value.log_tail[-1].startswith("ERROR: failed to solve")
    assert len(err.value.log_tail) == 5 and "#56 step 56" in str(err.value) and "#55" not in str(err.value)


# -- wheels ----------------------------------------------------------------------------------------

def _project(root: Path, name: str, version: str) -> Path:
    mod = name.replace("-", "_")
    (root / mod).mkdir(parents=True)
    (root / mod / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"

        [tool.setuptools]
        packages = ["{mod}"]
        """))
    return root


def test_local_wheels_are_checked_against_the_spec(tmp_path):
    proj = _project(tmp_path / "proj", "sbtest-local", "0.3.0")
    spec = build("3.11.7", "x86_64", [("sbtest-local", "0.2.0", {"dir_info": {"editable": True},
                                                               "url": proj.as_uri()})])
    with pytest.raises(WheelError, match="built from .* is sbtest-local 0.3.0.*pip install -e"):
        build_wheel(spec.local[0], tmp_path / "wheels", build_isolation=False)
    gone = build("3.11.7", "x86_64", [("gone", "1.0", {"dir_info": {}, "url": "file:///no/such/dir"})])
    with pytest.raises(WheelError, match="not on this machine"):
        build_wheel(gone.local[0], tmp_path / "wheels")


def test_repack_installed_distribution(tmp_path):
    whl = repack_installed("iniconfig", tmp_path)
    assert wheel_name_version(whl.name) == ("iniconfig", metadata.version("iniconfig"))
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert any(n.startswith("iniconfig/") and n.endswith(".py") for n in names)
    assert not any(n.endswith((".pyc", "INSTALLER", "direct_url.json")) for n in names)
    assert all(line.split(",")[0] in names for line in record.splitlines())
    assert repack_installed("iniconfig", tmp_path / "again").read_bytes() == whl.read_bytes()


# -- the Dockerfile's install steps, for real -------------------------------------------------------

def _index_wheel(directory: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel standing in for a package index's (tests stay offline)."""
    import base64
    import hashlib

    mod, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    files = {f"{mod}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for p, t in files.items()] + [f"{dist}.dist-info/RECORD,,"]
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as whl:
        for p, t in files.items():
            whl.writestr(p, t)
        whl.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")


@pytest.mark.slow
def test_dockerfile_install_steps_run_in_a_throwaway_virtualenv(tmp_path):
    """Every COPY and pip RUN step of a generated Dockerfile, run in order against a fresh
    virtualenv standing in for the image (paths under a scratch root): the index packages
    (from local wheels: no network), a local editable project and starburst itself as the wheels
    the builder makes from their directories, and a runtime_env pip extra. Then the installed
    starburst (not this checkout) imports, with its node entry point."""
    index = tmp_path / "index"
    index.mkdir()
    for name, version in (("sbtest-alpha", "1.2.0"), ("sbtest-beta", "3.4.0")):
        _index_wheel(index, name, version)
    proj = _project(tmp_path / "proj", "sbtest-local", "0.3.0")
    sb_version = metadata.version("starburst")
    spec = build(platform.python_version(), platform.machine(), [
        ("sbtest-alpha", "1.2.0", None),
        ("sbtest-local", "0.3.0", {"dir_info": {"editable": True}, "url": proj.as_uri()}),
        ("starburst", sb_version, {"dir_info": {"editable": True}, "url": REPO.as_uri()}),
    ]).with_pip(["sbtest-beta==3.4.0"])
    with source_lock(REPO):  # (other tests build starburst from this checkout too, in parallel)
        had_build_dir = (REPO / "build").exists()
        ctx = prepare_context(spec, tmp_path / "ctx", build_isolation=False, progress=lambda _: None)
        assert (REPO / "build").exists() == had_build_dir  # pip's in-tree build/ doesn't stay behind
    assert [p.name for p in (ctx / "wheels").iterdir()] == ["sbtest_local-0.3.0-py3-none-any.whl"]
    [sb_wheel] = (ctx / "starburst-wheel").iterdir()
    assert wheel_name_version(sb_wheel.name) == ("starburst", sb_version)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(index), PIP_DISABLE_PIP_VERSION_CHECK="1")

    def rooted(text):
        return re.sub(r"(?<![\w/])/(opt|tmp)/", lambda m: f"{root}/{m[1]}/", text)

    ran = []
    for op, args in parse((ctx / "Dockerfile").read_text()):
        if op == "COPY":
            *sources, dest = args.split()
            target = Path(rooted(dest))
            target.mkdir(parents=True, exist_ok=True)
            for src in sources:
                if (ctx / src).is_dir():
                    shutil.copytree(ctx / src, target, dirs_exist_ok=True)
                else:
                    shutil.copy(ctx / src, target)
        elif op == "RUN" and args.startswith("pip install"):
            proc = subprocess.run(["sh", "-c", rooted(args)], env=env, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=180)
            assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
            ran.append(args)
    assert len(ran) == 4  # index packages, local wheels, starburst, runtime_env pip
    assert not (root / "tmp" / "wheels").exists()  # the steps clean up after themselves

    # starburst's own dependencies come from this test environment, after the venv's packages
    deps = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    [site] = (venv / "lib").glob("python*/site-packages")
    (site / "zz_test_deps.pth").write_text(deps + "\n")
    probe = ("import json, starburst, starburst.node.entrypoint, sbtest_alpha, sbtest_beta, sbtest_local\n"
             "from importlib import metadata\n"
             "print(json.dumps({'file': starburst.__file__, 'version': starburst.__version__,\n"
             "  'dists': {n: metadata.version(n)\n"
             "            for n in ('starburst', 'sbtest-alpha', 'sbtest-beta', 'sbtest-local')}}))")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["file"].startswith(str(site)), got  # the image's copy, not this checkout
    assert got["version"] == sb_version
    assert got["dists"] == {"starburst": sb_version, "sbtest-alpha": "1.2.0", "sbtest-beta": "3.4.0",
                            "sbtest-local": "0.3.0"}
    # the image's CMD runs, and refuses to start without its store
    cmd = json.loads(parse((ctx / "Dockerfile").read_text())[-1][1])
    proc = subprocess.run(cmd, env={**env, "STARBURST_NODE_PORT": "47000"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "STARBURST_STORE must be set" in proc.stderr
