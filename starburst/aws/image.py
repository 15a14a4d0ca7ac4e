"""Building and pushing the worker image, only when its tag (the environment's hash) is new.

    uri = ensure_image(boto3.Session(), Settings.load(), capture())   # builds only if missing

``ensure_image`` looks the tag up in starburst's ECR repository; when it is missing (or
``rebuild=True``) it writes the build context (``dockerfile.build_context``, then the wheels of
local packages and of starburst itself, ``wheels.fill_wheels``) and hands it to an
``ImageBuilder``:

- ``CodeBuildBuilder`` (the default; no Docker engine on the laptop): the context is zipped and
  uploaded to the setup bucket as ``builds/<hash>.zip``; starburst's CodeBuild project (made by
  ``starburst setup``, or here if the account was set up before it existed) builds it with the
  buildspec of ``starburst.aws.codebuild``: log in to ECR, ``docker build --platform ...``,
  ``docker push <repo>:<hash>``.
  arm64 images are built on an ARM build host, natively. Progress shows each build phase with
  the elapsed time; a failed build names the failing phase and shows the tail of its log
  (CloudWatch Logs, the build log group).
- ``DockerBuilder`` (``builder="docker"``): the local engine, through the ``docker`` command:
  ``docker login`` with an ECR token, ``docker build``, ``docker push``.

The base image on CodeBuild is Docker Hub's official ``python:X.Y-slim`` through its ECR Public
mirror (``public.ecr.aws/docker/library``): the same image, without Docker Hub's anonymous pull
limits, which CodeBuild's shared addresses hit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

from ..envsync.dockerfile import base_image_for, build_context, platform_for
from ..envsync.spec import EnvSpec
from ..envsync.wheels import WheelError, fill_wheels
from ._errors import error_code
from .codebuild import BUILD_TIMEOUT_MINUTES, CODEBUILD_ENVIRONMENTS
from .context import caller_identity
from .provision import ensure_build_resources
from .settings import AwsSetupError

Progress = Callable[[str], None]

#: Docker Hub's official images, mirrored on ECR Public.
ECR_PUBLIC_LIBRARY = "public.ecr.aws/docker/library"

#: What each CodeBuild phase does here, for progress lines and failure messages.
PHASES = {
    "SUBMITTED": "submitted",
    "QUEUED": "waiting for a build host",
    "PROVISIONING": "starting the build host",
    "DOWNLOAD_SOURCE": "downloading the build context",
    "INSTALL": "preparing the build host",
    "PRE_BUILD": "logging in to ECR",
    "BUILD": "docker build",
    "POST_BUILD": "docker push",
    "UPLOAD_ARTIFACTS": "finishing",
    "FINALIZING": "finishing",
    "COMPLETED": "done",
}
_PHASE_OK = (None, "SUCCEEDED")


class BuildError(RuntimeError):
    """The image could not be built or pushed; the message says why and what to do."""


class BuildFailed(BuildError):
    """A build ran and failed: ``phase`` (e.g. ``BUILD``, ``docker build``), ``log_tail``."""

    def __init__(self, message: str, phase: str = "", status: str = "",
                 log_tail: Sequence[str] = ()):
        super().__init__(message)
        self.phase = phase
        self.status = status
        self.log_tail = list(log_tail)


# --------------------------------------------------------------------------------------------
# progress


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:4.1f}s"
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s"


class ConsoleProgress:
    """Progress as plain lines with the time since the start: ``[ 1m05s] BUILD: docker build``."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> str:
        return _elapsed(self.clock() - self.start)

    def __call__(self, message: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(f"[{self.elapsed():>6}] {message}\n")
        stream.flush()


def quiet(_message: str) -> None:
    """A progress sink that drops everything."""


# --------------------------------------------------------------------------------------------
# the builder interface


@runtime_checkable
class ImageBuilder(Protocol):
    """Builds the image of ``spec`` from a ready build context and pushes it as ``image_uri``.
    Raises BuildError (BuildFailed when a build ran and failed). A builder may also have
    ``name`` (for messages), ``base_registry`` (where it pulls ``python:X.Y-slim`` from; None:
    Docker Hub) and ``preflight()`` (cheap checks run before the context is made)."""

    def build(self, spec: EnvSpec, context_dir: Path, image_uri: str, progress: Progress) -> None:
        ...


# --------------------------------------------------------------------------------------------
# ECR names and lookups


def registry_host(account_id: str, region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account_id}.dkr.ecr.{region}.{suffix}"


def image_uri(settings, account_id: str, spec: EnvSpec) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<env hash>``."""
    return f"{registry_host(account_id, settings.region)}/{settings.repository}:{spec.hash()}"


def image_exists(ecr_client, repository: str, tag: str) -> bool:
    """Whether ``repository:tag`` is in ECR. BuildError when the repository itself is missing."""
    from botocore.exceptions import ClientError

    try:
        resp = ecr_client.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if error_code(exc) == "ImageNotFoundException":
            return False
        if error_code(exc) == "RepositoryNotFoundException":
            raise BuildError(f"the ECR repository {repository} does not exist: run "
                             "'starburst setup'") from exc
        raise
    return any(tag in (d.get("imageTags") or []) for d in resp.get("imageDetails", []))


def account_id(session, region: str) -> str:
    """The account of ``session``'s credentials; BuildError saying what to do when there are none."""
    try:
        return caller_identity(session, region)["Account"]
    except AwsSetupError as exc:
        raise BuildError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# the build context


def prepare_context(spec: EnvSpec, directory, base_image: str | None = None,
                    python: str = sys.executable, build_isolation: bool = True,
                    progress: Progress | None = None) -> Path:
    """A complete build context: ``build_context`` plus the wheels it needs. BuildError when a
    wheel can't be made."""
    path = build_context(spec, directory, base_image)
    try:
        fill_wheels(spec, path, python=python, build_isolation=build_isolation, progress=progress)
    except WheelError as exc:
        raise BuildError(str(exc)) from exc
    return path


def zip_context(context_dir, out) -> Path:
    """The context as a zip (CodeBuild's S3 source is a zip), entries sorted and dated alike:
    the same context gives the same bytes."""
    root, out = Path(context_dir), Path(out)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            if str(rel_dir) != ".":
                info = zipfile.ZipInfo(f"{rel_dir.as_posix()}/", (1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            for name in sorted(filenames):
                full = Path(dirpath) / name
                info = zipfile.ZipInfo((rel_dir / name).as_posix(), (1980, 1, 1, 0, 0, 0))
                info.external_attr = ((0o755 if os.access(full, os.X_OK) else 0o644) | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, full.read_bytes())
    return out


# --------------------------------------------------------------------------------------------
# AWS CodeBuild


def start_build_request(settings, bucket: str, spec: EnvSpec, image_uri: str) -> dict:
    """The ``StartBuild`` parameters of one image build."""
    variables = {"IMAGE_URI": image_uri, "REGISTRY": image_uri.split("/", 1)[0],
                 "PLATFORM": platform_for(spec), "ENV_HASH": spec.hash()}
    request: dict[str, Any] = {
        "projectName": settings.build_project,
        "sourceTypeOverride": "S3",
        "sourceLocationOverride": f"{bucket}/{settings.build_context_key(spec.hash())}",
        "environmentVariablesOverride": [{"name": k, "value": v, "type": "PLAINTEXT"}
                                         for k, v in variables.items()],
    }
    if spec.arch != "x86_64":  # the project's host is x86_64: build natively on an ARM host
        env = CODEBUILD_ENVIRONMENTS[spec.arch]
        request.update(environmentTypeOverride=env["type"], imageOverride=env["image"],
                       computeTypeOverride=env["computeType"])
    return request


def failed_phase(build: dict) -> tuple[str, str]:
    """(phase type, its error messages) of the first phase that did not succeed."""
    for phase in build.get("phases") or []:
        if phase.get("phaseStatus") not in _PHASE_OK:
            messages = "; ".join(c["message"] for c in phase.get("contexts") or []
                                 if c.get("message"))
            return phase.get("phaseType", "?"), messages
    return build.get("currentPhase") or "?", ""


class CodeBuildBuilder:
    """Builds on AWS CodeBuild: no Docker engine on the laptop. ``poll(build_id) -> build`` replaces
    ``BatchGetBuilds`` (tests); ``sleep`` and ``clock`` likewise."""

    name = "codebuild"
    base_registry: str | None = ECR_PUBLIC_LIBRARY

    def __init__(self, session, settings, *, poll: Callable[[str], dict] | None = None,
                 poll_interval: float = 5.0, heartbeat_s: float = 30.0,
                 timeout_s: float | None = None, log_lines: int = 40,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.session = session
        self.settings = settings
        self._poll = poll
        self.poll_interval = poll_interval
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s if timeout_s is not None else BUILD_TIMEOUT_MINUTES * 60 + 600
        self.log_lines = log_lines
        self.sleep = sleep
        self.clock = clock
        self._clients: dict[str, Any] = {}
        self._ready = False
        self.build_id: str | None = None
        #: Seconds CodeBuild ran builds for this builder (from each build's start and end time):
        #: what CodeBuild bills, per started minute.
        self.build_seconds = 0.0

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.settings.region)
        return self._clients[service]

    def preflight(self) -> None:
        """The build log group, role and project exist (created, as setup does, if not)."""
        if self._ready:
            return
        try:
            ensure_build_resources(self.session, self.settings)
        except AwsSetupError as exc:
            raise BuildError(str(exc)) from exc
        self._ready = True

    def bucket(self) -> str:
        return self.settings.bucket_name(account_id(self.session, self.settings.region))

    def upload(self, spec: EnvSpec, context_dir: Path, progress: Progress) -> tuple[str, str]:
        bucket, key = self.bucket(), self.settings.build_context_key(spec.hash())
        with tempfile.TemporaryDirectory(prefix="starburst-zip-") as tmp:
            archive = zip_context(context_dir, Path(tmp) / "context.zip")
            size = archive.stat().st_size
            progress(f"uploading the build context ({size / 1e6:.1f} MB) to s3://{bucket}/{key}")
            self.client("s3").upload_file(str(archive), bucket, key)
        return bucket, key

    def start(self, spec: EnvSpec, context_dir: Path, image_uri: str, progress: Progress) -> str:
        self.preflight()
        bucket, _ = self.upload(spec, context_dir, progress)
        request = start_build_request(self.settings, bucket, spec, image_uri)
        build = self.client("codebuild").start_build(**request)["build"]
        self.build_id = build["id"]
        progress(f"CodeBuild build {build['id']} started")
        return build["id"]

    def poll(self, build_id: str) -> dict:
        if self._poll is not None:
            return self._poll(build_id)
        builds = self.client("codebuild").batch_get_builds(ids=[build_id]).get("builds") or []
        if not builds:
            raise BuildError(f"CodeBuild has no build {build_id}")
        return builds[0]

    def wait(self, build_id: str, progress: Progress) -> dict:
        start = self.clock()
        last_phase, since = None, start
        while True:
            build = self.poll(build_id)
            now = self.clock()
            phase = build.get("currentPhase") or "?"
            if phase != last_phase:
                progress(f"CodeBuild {phase}: {PHASES.get(phase, phase)}")
                last_phase, since = phase, now
            elif now - since >= self.heartbeat_s:
                progress(f"CodeBuild {phase}: {PHASES.get(phase, phase)}, {_elapsed(now - start)} "
                         "since the start")
                since = now
            if build.get("buildComplete") or build.get("buildStatus") not in (None, "IN_PROGRESS"):
                return build
            if now - start > self.timeout_s:
                try:
                    self.client("codebuild").stop_build(id=build_id)
                except Exception:  # noqa: BLE001 - the timeout is the error to report
                    pass
                raise BuildError(f"CodeBuild build {build_id} did not finish within "
                                 f"{_elapsed(self.timeout_s)}: stopped it")
            self.sleep(self.poll_interval)

    def log_tail(self, build: dict) -> list[str]:
        logs = build.get("logs") or {}
        group, stream = logs.get("groupName"), logs.get("streamName")
        if not group or not stream:
            return []
        from botocore.exceptions import ClientError

        try:
            events = self.client("logs").get_log_events(
                logGroupName=group, logStreamName=stream, startFromHead=False,
                limit=self.log_lines)["events"]
        except ClientError:
            return []
        return [line for e in events for line in e.get("message", "").rstrip("\n").splitlines()]

    def failure(self, build: dict) -> BuildFailed:
        status = build.get("buildStatus", "?")
        phase, messages = failed_phase(build)
        tail = self.log_tail(build)
        logs = build.get("logs") or {}
        text = (f"the image build failed in phase {phase} ({PHASES.get(phase, phase)}): {status}"
                + (f": {messages}" if messages else "") + f"\n  CodeBuild build {build.get('id')}")
        if tail:
            text += (f"\n  last {len(tail)} lines of its log ({logs.get('groupName')} "
                     f"{logs.get('streamName')}):\n" + "\n".join(f"    | {t}" for t in tail))
        else:
            text += "\n  (no log lines: the build stopped before it wrote any)"
        if logs.get("deepLink"):
            text += f"\n  full log: {logs['deepLink']}"
        return BuildFailed(text, phase, status, tail)

    def build(self, spec: EnvSpec, context_dir: Path, image_uri: str, progress: Progress) -> None:
        build_id = self.start(spec, context_dir, image_uri, progress)
        build = self.wait(build_id, progress)
        started, ended = build.get("startTime"), build.get("endTime")
        if started is not None and ended is not None:
            self.build_seconds += max(0.0, (ended - started).total_seconds())
        if build.get("buildStatus") != "SUCCEEDED":
            raise self.failure(build)
        try:  # the context served its purpose; a failed build's stays, for a look
            self.client("s3").delete_object(Bucket=self.bucket(),
                                            Key=self.settings.build_context_key(spec.hash()))
        except Exception:  # noqa: BLE001 - cleanup only
            pass


# --------------------------------------------------------------------------------------------
# a local Docker engine

DOCKER_NOT_FOUND = ("the docker command was not found on PATH: install Docker (and start its "
                    "engine), or use the default builder, AWS CodeBuild, which needs no local "
                    "Docker ('builder': 'codebuild')")


def docker_build_command(context_dir, image_uri: str, platform: str,
                         docker: str = "docker") -> list[str]:
    return [docker, "build", "--pull", "--platform", platform, "--tag", image_uri, str(context_dir)]


def docker_push_command(image_uri: str, docker: str = "docker") -> list[str]:
    return [docker, "push", image_uri]


def docker_login_command(registry: str, user: str = "AWS", docker: str = "docker") -> list[str]:
    return [docker, "login", "--username", user, "--password-stdin", registry]


class DockerBuilder:
    """Builds with a local Docker engine through the ``docker`` command. With a session it logs in
    to ECR first (a token from ``GetAuthorizationToken``, passed on standard input)."""

    name = "docker"
    base_registry: str | None = None

    def __init__(self, session=None, settings=None, docker: str = "docker", log_lines: int = 40,
                 echo: bool = True):
        self.session = session
        self.settings = settings
        self.docker = docker
        self.log_lines = log_lines
        self.echo = echo  # forward docker's output lines to the progress sink
        self._ready = False

    def executable(self) -> str:
        found = shutil.which(self.docker)
        if found is None:
            raise BuildError(DOCKER_NOT_FOUND)
        return found

    def preflight(self) -> None:
        docker = self.executable()
        if self._ready:
            return
        try:
            proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                  capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BuildError("'docker info' did not answer within 60 s: is the Docker engine "
                             "running?") from exc
        if proc.returncode != 0 or not proc.stdout.strip():
            why = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
            raise BuildError(f"the docker command is installed but no Docker engine answers ({why}): "
                             "start Docker, or use the default builder, AWS CodeBuild, which needs "
                             "no local Docker ('builder': 'codebuild')")
        self._ready = True

    def _run(self, cmd: list[str], what: str, progress: Progress, stdin: str | None = None) -> None:
        tail: deque[str] = deque(maxlen=self.log_lines)
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if self.echo:
                progress(f"{what} | {line}")
        code = proc.wait()
        if code != 0:
            lines = list(tail)
            raise BuildFailed(f"the image build failed in phase {what} (exit {code})"
                              + (f"; its last {len(lines)} lines:\n" + "\n".join(f"    | {t}" for t in lines)
                                 if lines else ""), what, f"exit {code}", lines)

    def login(self, registry: str, progress: Progress) -> None:
        import base64

        token = self.session.client("ecr", region_name=self.settings.region).get_authorization_token()
        user, _, password = base64.b64decode(
            token["authorizationData"][0]["authorizationToken"]).decode().partition(":")
        progress(f"docker login {registry}")
        self._run(docker_login_command(registry, user, self.executable()), "docker login",
                  progress, stdin=password)

    def build(self, spec: EnvSpec, context_dir: Path, image_uri: str, progress: Progress) -> None:
        self.preflight()
        docker = self.executable()
        if self.session is not None:
            self.login(image_uri.split("/", 1)[0], progress)
        progress(f"docker build ({platform_for(spec)})")
        self._run(docker_build_command(context_dir, image_uri, platform_for(spec), docker),
                  "docker build", progress)
        progress(f"docker push {image_uri}")
        self._run(docker_push_command(image_uri, docker), "docker push", progress)


# --------------------------------------------------------------------------------------------
# the entry point


def make_builder(name: str, session, settings) -> ImageBuilder:
    if name == "codebuild":
        return CodeBuildBuilder(session, settings)
    if name == "docker":
        return DockerBuilder(session, settings)
    raise ValueError(f"unknown image builder {name!r}: use 'codebuild' or 'docker'")


def ensure_image(session, settings, spec: EnvSpec,
                 builder: None | str | ImageBuilder = None, rebuild: bool = False,
                 progress: Progress | None = None, *, base_image: str | None = None,
                 python: str = sys.executable, build_isolation: bool = True) -> str:
    """The URI of ``spec``'s image in starburst's ECR repository, built and pushed first when its
    tag is missing (or ``rebuild``). ``builder``: an ImageBuilder, or ``"codebuild"`` /
    ``"docker"`` (default: ``settings.builder``). ``progress`` gets one line per step (default:
    printed to stderr with the elapsed time). Raises BuildError."""
    say = progress if progress is not None else ConsoleProgress()
    account = account_id(session, settings.region)
    uri = image_uri(settings, account, spec)
    ecr = session.client("ecr", region_name=settings.region)
    tag = spec.hash()
    if not rebuild and image_exists(ecr, settings.repository, tag):
        return uri
    chosen = make_builder(builder or settings.builder, session, settings) \
        if builder is None or isinstance(builder, str) else builder
    name = getattr(chosen, "name", type(chosen).__name__)
    preflight = getattr(chosen, "preflight", None)
    if preflight is not None:
        preflight()
    registry = getattr(chosen, "base_registry", None)
    if base_image is None and registry:
        base_image = f"{registry}/{base_image_for(spec)}"
    say(f"building {uri} with {name}: python {spec.python} {spec.arch}, "
        f"{len(spec.packages)} packages, starburst {spec.starburst.version}")
    with tempfile.TemporaryDirectory(prefix="starburst-build-") as tmp:
        context = prepare_context(spec, Path(tmp) / "context", base_image=base_image,
                                  python=python, build_isolation=build_isolation, progress=say)
        chosen.build(spec, context, uri, say)
    if not image_exists(ecr, settings.repository, tag):
        raise BuildError(f"the {name} build finished but {uri} is not in ECR")
    say(f"image ready: {uri}")
    return uri


__all__ = ["ImageBuilder", "CodeBuildBuilder", "DockerBuilder", "BuildError", "BuildFailed",
           "ConsoleProgress", "quiet", "ensure_image", "image_uri", "image_exists",
           "registry_host", "prepare_context", "zip_context", "start_build_request",
           "docker_build_command", "docker_push_command", "docker_login_command",
           "make_builder", "account_id", "ECR_PUBLIC_LIBRARY", "PHASES"]
