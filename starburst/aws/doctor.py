"""``starburst doctor``: check a real AWS account end to end, on the smallest Fargate size, for
at most one cent.

The checks run in order; each is timed and, when it fails, names the likely cause and the fix:

    credentials   STS answers for the region 'starburst setup' used
    resources     setup's resources exist and are starburst's; the bucket is private and encrypted
    quota         the Fargate vCPU quota can be read and a 0.25 vCPU task fits
    image         this environment's worker image is in ECR (or is built now: how long)
    run_task      init(cluster="fargate", workers=1, cpu=0.25, memory="0.5GB", max_cost=...): the
                  head's own RunTask, then
    running       ECS says RUNNING,
    address       the task's network interface has a public address,
    tcp_connect   this machine reaches the node's port (the security group admits it),
    tls_handshake the head dialled the node over mutual TLS and the node joined:
                  together, the cold start users see
    round_trip    one tiny task's round trip, against the TCP connect time (the network's share)
    s3            64 MiB written to and read back from the cluster's S3 prefix by the node
    lease         the head is killed: the node stops itself when its lease runs out, as after a
                  laptop crash
    stop          nothing of the cluster is left running: ECS confirms its task STOPPED; the cost

Whatever doctor starts is stopped whatever happens (try/finally; SIGTERM and SIGHUP end the run
the way Ctrl-C does). Nothing here is new machinery: the cluster is started by ``starburst.init``
and the head's Fargate provider, exactly as a user's would be; doctor only watches ECS and the
node from the outside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

# The AWS modules doctor builds on.
from .cluster import public_ip, worker_image
from .context import caller_identity
from .launcher import default_address_resolver, eni_of, stop_reasons
from .pricing import PriceSource, format_cost, price_source, task_cost
from .provider import read_report
from .quotas import ServiceQuotasSource
from .provision import find_managed
from .resources import BUCKET, BUILD_KINDS, EXISTS, MISSING, SECURITY_GROUP
from .settings import AwsSetupError, Settings

#: The smallest Fargate task: what doctor launches.
CPU, MEMORY, MEMORY_GB = 0.25, "0.5GB", 0.5
#: The hard budget (USD): the head's max_cost, and doctor refuses to start if its timeouts
#: could cost more.
BUDGET = 0.01
#: Bytes the node writes to S3 and reads back.
S3_BYTES = 64 * 2**20
#: Seconds allowed: the first task (an executor starts), each later one, the S3 round trip.
FIRST_TASK_S, TASK_S, S3_S = 60.0, 10.0, 120.0
ROUND_TRIPS = 10

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass
class Check:
    """One line of the checklist."""

    name: str
    title: str
    status: str = SKIP
    seconds: float = 0.0
    detail: str = ""
    cause: str = ""
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class CheckFailed(Exception):
    """A check failed: what was seen, its likely cause and what to do."""

    def __init__(self, detail: str, cause: str = "", fix: str = "", data: Optional[dict[str, Any]] = None):
        super().__init__(detail)
        self.detail, self.cause, self.fix, self.data = detail, cause, fix, data or {}


class Warned(Exception):
    """A check could not be completed, but nothing is known to be wrong."""

    def __init__(self, detail: str, cause: str = "", fix: str = "", data: Optional[dict[str, Any]] = None):
        super().__init__(detail)
        self.detail, self.cause, self.fix, self.data = detail, cause, fix, data or {}


@dataclass
class DoctorReport:
    region: str = ""
    account: str = ""
    cluster_id: str = ""
    budget: float = BUDGET
    #: What the Fargate task cost (billed seconds at the region's list price); None: none ran.
    cost: Optional[float] = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status in (PASS, WARN) for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "region": self.region, "account": self.account, "cluster_id": self.cluster_id,
                "budget_usd": self.budget, "cost_usd": self.cost,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def summary(self) -> str:
        failed = [c.name for c in self.checks if c.status == FAIL]
        cost = f"cost {format_cost(self.cost)} of a {format_cost(self.budget)} budget" if self.cost is not None \
            else "no Fargate task was started"
        if failed:
            return f"doctor: FAILED ({', '.join(failed)}); {cost}"
        return f"doctor: all checks passed; {cost}"


def format_check(check: Check) -> str:
    mark = {PASS: "ok  ", WARN: "warn", FAIL: "FAIL", SKIP: "skip"}[check.status]
    took = f"{check.seconds:6.1f} s" if check.status != SKIP else " " * 8
    lines = [f"  {mark}  {check.title:<14} {took}  {check.detail}"]
    if check.cause:
        lines.append(f"{'':28}likely cause: {check.cause}")
    if check.fix:
        lines.append(f"{'':28}fix: {check.fix}")
    return "\n".join(lines)


# -- the node's side: functions run as tasks (pickled by reference: starburst is in the image) --

def _noop() -> float:
    return time.time()


def _s3_round_trip(nbytes: int) -> dict[str, Any]:
    """On the node: write ``nbytes`` to the cluster's S3 prefix through starburst's store with the
    node's own credentials (its task role), read them back (no cache), check and delete them."""
    import hashlib
    import uuid

    import numpy as np

    from starburst.serialization import serialize
    from starburst.store.s3 import S3Store

    store = S3Store(os.environ["STARBURST_STORE"], cache_bytes=0, cache_dir="")
    # An array travels out of band: no copy of its bytes beside the one read back (0.5 GB nodes).
    value = serialize(np.frombuffer(os.urandom(nbytes), dtype=np.uint8))
    key = f"doctor-{uuid.uuid4().hex}"
    sent = hashlib.sha256()
    for chunk in value.chunks():
        sent.update(chunk)
    start = time.monotonic()
    store.put(key, value)
    put_s = time.monotonic() - start
    start = time.monotonic()
    back = store.get(key)
    get_s = time.monotonic() - start
    same = sent.digest() == hashlib.sha256(back).digest()
    store.delete(key)
    store.flush()
    store.close()
    return {"bytes": value.size, "put_s": put_s, "get_s": get_s, "same": same}


# -- the checks ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (so the finally blocks stop what was started)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, interrupt)
    except ValueError:  # not the main thread: nothing to install
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _connect_s(host: str, port: int, timeout: float) -> float:
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout):
        return time.perf_counter() - start


class Doctor:
    """Runs the checks (see the module docstring). ``say`` gets each check as it finishes.
    ``join_timeout``: seconds for the task to start and the node to join (a real cold start,
    image pull included, is 30-120 s). ``lease``: the node's lease in seconds. ``build``: build
    a missing image (else the image check fails)."""

    def __init__(self, *, budget: float = BUDGET, join_timeout: float = 300.0, lease: float = 30.0,
                 stop_timeout: float = 180.0, build: bool = True, poll_s: float = 0.5,
                 say: Callable[[Check], None] = lambda check: None, session=None):
        self.budget = budget
        self.join_timeout = join_timeout
        self.lease = lease
        self.stop_timeout = stop_timeout
        self.build = build
        self.poll_s = poll_s
        self.say = say
        self.session = session
        self._prices: PriceSource | None = None
        self.report = DoctorReport(budget=budget)
        self.settings: Optional[Settings] = None
        self.image = ""
        self.task_arn = ""
        self._ecs_client: Any = None
        self.task: dict = {}
        self.address = ""
        self.connect_times: list[float] = []
        self._launched_at: Optional[float] = None
        self._running_at: Optional[float] = None
        self.worst_cost: Optional[float] = None
        self._stopped_at: Optional[float] = None
        self._head_pid: Optional[int] = None

    # -- running ------------------------------------------------------------------------------

    def run(self) -> DoctorReport:
        steps: list[tuple[str, str, Callable[[], Any]]] = [
            ("credentials", "credentials", self.check_credentials),
            ("resources", "resources", self.check_resources),
            ("quota", "quota", self.check_quota),
            ("image", "worker image", self.check_image),
            ("run_task", "RunTask", self.check_run_task),
            ("running", "RUNNING", self.check_running),
            ("address", "address", self.check_address),
            ("tcp_connect", "TCP connect", self.check_tcp),
            ("tls_handshake", "TLS handshake", self.check_joined),
            ("round_trip", "round trip", self.check_round_trip),
            ("s3", "S3 64 MiB", self.check_s3),
            ("lease", "lease", self.check_lease),
        ]
        failed = False
        with _signals_interrupt():
            try:
                for name, title, step in steps:
                    if failed:
                        self._record(Check(name, title))
                        continue
                    failed = not self._step(name, title, step)
            except KeyboardInterrupt as exc:
                self._record(Check("interrupted", "interrupted", FAIL, detail=f"stopped by {exc or 'Ctrl-C'}",
                                   fix="run 'starburst doctor' again"))
            finally:
                if self._launched_at is not None:
                    self._step("stop", "stop", self.check_stop)
        return self.report

    def _step(self, name: str, title: str, fn: Callable[[], Any]) -> bool:
        start = time.monotonic()
        check = Check(name, title)
        try:
            detail, data = fn()
            check.status, check.detail, check.data = PASS, detail, data
        except (CheckFailed, Warned) as exc:
            check.status = FAIL if isinstance(exc, CheckFailed) else WARN
            check.detail, check.cause, check.fix, check.data = exc.detail, exc.cause, exc.fix, exc.data
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - an unexpected error is a failed check, said as is
            check.status, check.detail = FAIL, f"{type(exc).__name__}: {exc}"
        check.seconds = time.monotonic() - start
        self._record(check)
        return check.status != FAIL

    def _record(self, check: Check) -> None:
        self.report.checks.append(check)
        self.say(check)

    def _session(self):
        if self.session is None:
            import boto3

            assert self.settings is not None
            self.session = boto3.Session(region_name=self.settings.region)
        return self.session

    def _ecs(self):
        """One ECS client for the run (the steps poll it every ``poll_s``)."""
        assert self.settings is not None
        if self._ecs_client is None:
            self._ecs_client = self._session().client("ecs", region_name=self.settings.region)
        return self._ecs_client

    # -- account ------------------------------------------------------------------------------

    def check_credentials(self) -> tuple[str, dict]:
        if not Settings.path().exists():
            raise CheckFailed("starburst has no AWS resources on this machine yet",
                              cause=f"no settings in {Settings.path()}",
                              fix="run 'starburst setup' (it creates the bucket, roles, ECS cluster and security "
                                  "group)")
        self.settings = Settings.load()
        self.report.region = self.settings.region
        try:
            me = caller_identity(self._session(), self.settings.region)
        except AwsSetupError as exc:
            raise CheckFailed(f"AWS credentials don't work in {self.settings.region}: {exc}",
                              cause="no credentials, expired ones, or the wrong profile",
                              fix="configure them ('aws configure', AWS_PROFILE or AWS_ACCESS_KEY_ID/"
                                  "AWS_SECRET_ACCESS_KEY) and run doctor again") from exc
        self.report.account = me["Account"]
        return f"account {me['Account']} as {me['Arn']}, region {self.settings.region}", {
            "account": me["Account"], "arn": me["Arn"], "region": self.settings.region}

    def check_resources(self) -> tuple[str, dict]:
        assert self.settings is not None
        try:
            found = find_managed(self._session(), self.settings)
        except AwsSetupError as exc:
            raise CheckFailed(str(exc), fix="run 'starburst setup'") from exc
        # The image build's own resources are created by the first build when missing.
        later = [r for r in found if r.kind in BUILD_KINDS and r.status == MISSING]
        bad = [r for r in found if r.status != EXISTS and r not in later]
        if bad:
            names = ", ".join(f"{r.kind} {r.name} ({r.status})" for r in bad)
            raise CheckFailed(f"not as 'starburst setup' left them: {names}",
                              cause="setup never finished, or something was deleted or recreated by hand",
                              fix="run 'starburst setup' again (it creates what is missing)",
                              data={"resources": {r.kind: r.status for r in found}})
        bucket = next(r.name for r in found if r.kind == BUCKET)
        unknown = self._bucket_private(bucket)
        group = next((r for r in found if r.kind == SECURITY_GROUP), None)
        data = {"resources": {r.kind: r.status for r in found}, "bucket": bucket,
                "security_group": group.detail if group else ""}
        admits = f"; security group {group.detail}" if group is not None else ""
        if later:
            admits += f"; the image build's {', '.join(r.kind for r in later)}: made by the first build"
        if unknown:
            raise Warned(f"{len(found) - len(later)} present{admits}; bucket {bucket}: could not verify its {unknown}",
                         cause="these credentials may not read the bucket's configuration",
                         fix="nothing needed to run; 'starburst setup' sets them", data=data)
        return f"{len(found) - len(later)} present{admits}; bucket {bucket} private and encrypted", data

    def _bucket_private(self, bucket: str) -> str:
        """Why the bucket is not private and encrypted (CheckFailed), or what could not be verified
        (S3 refused to say: no permission, or a store without the API); "" when all is well."""
        from botocore.exceptions import ClientError

        from ._errors import error_code

        s3 = self._session().client("s3", region_name=self.report.region)
        unknown = []
        try:
            rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"].get("Rules")
            if not rules:
                raise CheckFailed(f"the bucket {bucket} has no default encryption", fix="run 'starburst setup' again")
        except ClientError as exc:
            if error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
                raise CheckFailed(f"the bucket {bucket} has no default encryption",
                                  cause="its encryption configuration was removed",
                                  fix="run 'starburst setup' again (it restores it)") from exc
            unknown.append(f"encryption ({error_code(exc)})")
        try:
            block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchPublicAccessBlockConfiguration":
                unknown.append(f"public access block ({error_code(exc)})")
                return ", ".join(unknown)
            block = {}
        open_ = sorted(k for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
                       if not block.get(k))
        if open_:
            raise CheckFailed(f"the bucket {bucket} does not block public access: {', '.join(open_)} off",
                              cause="its public access block was changed or removed",
                              fix="run 'starburst setup' again (it restores it)")
        return ", ".join(unknown)

    def check_quota(self) -> tuple[str, dict]:
        assert self.settings is not None
        source = ServiceQuotasSource(region=self.settings.region, session=self._session())
        try:
            limit = source.fargate_vcpu_limit(False)
            used = source.current_vcpu_usage(False)
        except Exception as exc:
            why = str(exc).splitlines()[0][:200]
            raise Warned(f"could not read the Fargate vCPU quota: {why}",
                         cause="Service Quotas or CloudWatch did not answer (these credentials need servicequotas:Get* "
                               "and cloudwatch:GetMetricData)",
                         fix="nothing needed to run; without it starburst can't plan launches around the "
                             "quota") from exc
        if limit - used < CPU:
            raise CheckFailed(f"Fargate vCPU quota {limit:g}, {used:g} in use: no room for {CPU} vCPU",
                              cause="the quota is used up by other tasks", fix="'starburst quota' shows it; "
                              "stop other Fargate tasks or request an increase", data={"limit": limit, "used": used})
        return f"Fargate on-demand vCPU: {limit:g}, {used:g} in use", {"limit": limit, "used": used}

    def check_image(self) -> tuple[str, dict]:
        from ..envsync import capture
        from .image import BuildError, ConsoleProgress, account_id, image_exists, image_uri

        assert self.settings is not None
        spec = capture(machine="x86_64")  # doctor's task is x86_64, whatever this machine is
        session = self._session()
        uri = image_uri(self.settings, account_id(session, self.settings.region), spec)
        ecr = session.client("ecr", region_name=self.settings.region)
        try:
            found = image_exists(ecr, self.settings.repository, spec.hash())
        except BuildError as exc:
            raise CheckFailed(str(exc), fix="run 'starburst setup'") from exc
        if found:
            self.image = uri
            return f"{uri} in ECR", {"image": uri, "built": False}
        if not self.build:
            raise CheckFailed(f"no image for this environment ({spec.hash()}) in ECR",
                              cause="it was never built (the first init(cluster='fargate') builds it), or "
                                    "it was deleted", fix="run 'starburst env --build' (or doctor without "
                                                          "--no-build)", data={"image": uri})
        start = time.monotonic()
        try:
            self.image = worker_image(session, self.settings, "x86_64", ConsoleProgress(sys.stderr))
        except RuntimeError as exc:
            raise CheckFailed(f"the image was missing and its build failed: {exc}",
                              cause="see the build's log above", fix="'starburst env --build' shows the build "
                                                                    "as it runs") from exc
        took = time.monotonic() - start
        return f"{self.image} built in {took:.0f} s", {"image": self.image, "built": True, "build_s": took}

    # -- the cluster --------------------------------------------------------------------------

    def _rates(self):
        assert self.settings is not None
        if self._prices is None:  # the Price List API when it answers (a region the table lacks too)
            self._prices = price_source(self.session)
        return self._prices.rates(self.settings.region, "x86_64", False)

    def check_run_task(self) -> tuple[str, dict]:
        import starburst
        from starburst.driver import process

        assert self.settings is not None
        running = process.find_head()
        if running is not None:
            raise CheckFailed(f"a starburst head is running here (pid {running.pid}, {running.provider})",
                              cause="doctor starts a cluster of its own",
                              fix="stop it with 'starburst down', then run doctor again")
        # Every wait is bounded: the longest the task can run (ECS stops it within a minute or so).
        worst = (self.join_timeout + FIRST_TASK_S + ROUND_TRIPS * TASK_S + S3_S + self.lease + 60.0
                 + self.stop_timeout + 60.0)
        worst_cost = task_cost(worst, CPU, MEMORY_GB, self._rates())
        if worst_cost > self.budget:
            raise CheckFailed(f"its timeouts could cost {format_cost(worst_cost)}, over the "
                              f"{format_cost(self.budget)} budget", fix="shorten --timeout or --lease")
        self.worst_cost = worst_cost
        self._launched_at = start = time.monotonic()
        try:
            starburst.init(cluster="fargate", workers=1, cpu=CPU, memory=MEMORY, max_cost=self.budget,
                           lease=self.lease, image=self.image, idle_timeout=3600, auto_quota_request=False)
        except Exception as exc:
            raise CheckFailed(f"the cluster did not start: {exc}") from exc
        info = process.find_head()
        if info is None:
            raise CheckFailed("the head exited as soon as it started", fix="run doctor again; 'starburst down --all' "
                                                                          "stops any task it left")
        self._head_pid = info.pid
        self.report.cluster_id = info.cluster_id
        ecs, cluster = self._ecs(), self.settings.ecs_cluster
        arns = self._wait(lambda: ecs.list_tasks(cluster=cluster, startedBy=info.cluster_id)["taskArns"], 30.0)
        if not arns:
            raise CheckFailed("the head started but ECS lists no task of its cluster",
                              fix="'starburst down --all' stops anything left; run doctor again")
        self.task_arn = arns[0]
        took = time.monotonic() - start
        return (f"init (checks, head, RunTask) {took:.1f} s: task {self.task_arn.rsplit('/', 1)[-1]} of cluster "
                f"{info.cluster_id}"), {"task": self.task_arn, "cluster_id": info.cluster_id,
                                        "worst_case_cost_usd": worst_cost}

    def _wait(self, probe: Callable[[], Any], timeout: float) -> Any:
        """``probe()`` until it returns something true or ``timeout`` passes (then its last value)."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(self.poll_s)

    def _describe(self) -> dict:
        assert self.settings is not None
        tasks = self._ecs().describe_tasks(cluster=self.settings.ecs_cluster, tasks=[self.task_arn])["tasks"]
        self.task = tasks[0] if tasks else {"lastStatus": "STOPPED", "stoppedReason": "ECS no longer lists it"}
        return self.task

    def _left_by_deadline(self) -> float:
        assert self._launched_at is not None
        return max(0.0, self._launched_at + self.join_timeout - time.monotonic())

    def _stopped_early(self, where: str) -> CheckFailed:
        """The task stopped before the node joined: why, as ECS says, and what usually causes it."""
        assert self.settings is not None
        why = stop_reasons([self.task]).get(self.task.get("taskArn", ""), self.task.get("stoppedReason", "stopped"))
        logs = f"CloudWatch log group {self.settings.log_group}"
        if "CannotPull" in why or "pull" in why.lower():
            cause = "the worker image can't be pulled: it is not in ECR, or the execution role lacks ECR access"
            fix = "run 'starburst env --build', then 'starburst setup' to restore the roles"
        elif "ResourceInitializationError" in why:
            cause = "the task could not reach ECR or CloudWatch Logs (execution role, or no public IP/route)"
            fix = "run 'starburst setup' again"
        elif "exited" in why.lower():
            bundle = f"s3://{self.settings.bucket_name(self.report.account)}/{self.settings.object_prefix}/..."
            cause = (f"the node exited at start, most often because it could not read its TLS bundle ({bundle}): "
                     "the task role lacks s3:GetObject on that prefix or the bucket denies it")
            fix = f"run 'starburst setup' again (it restores the task role's policy); the node's log is in {logs}"
        else:
            cause = "ECS stopped it (capacity, Spot, or an account limit)"
            fix = f"see the reason; the node's log is in {logs}"
        return CheckFailed(f"the task stopped {where}: {why}", cause=cause, fix=fix,
                           data={"stopped_reason": why})

    def check_running(self) -> tuple[str, dict]:
        def probe():
            task = self._describe()
            return task.get("lastStatus") in ("RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED")

        self._wait(probe, self._left_by_deadline())
        status = self.task.get("lastStatus")
        if status != "RUNNING":
            if status in ("DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"):
                raise self._stopped_early("before it ran")
            raise CheckFailed(f"the task is still {status} after {self.join_timeout:g} s",
                              cause="Fargate capacity is short, or the image is large and slow to pull",
                              fix="run doctor again later, or with a longer --timeout")
        self._running_at = time.monotonic()
        return "ECS says RUNNING", {"last_status": status}

    def check_address(self) -> tuple[str, dict]:
        assert self.settings is not None
        resolve = default_address_resolver(self._session().client("ec2", region_name=self.settings.region))

        def probe():
            eni = eni_of(self._describe())
            return resolve([eni]).get(eni) if eni else None

        ip = self._wait(probe, self._left_by_deadline())
        if not ip:
            raise CheckFailed("the task's network interface has no public address",
                              cause="the subnets don't assign public IPs (assignPublicIp needs a public subnet "
                                    "with an internet gateway)", fix="run 'starburst setup' again")
        self.address = f"{ip}:{self.settings.node_port}"
        return self.address, {"address": self.address}

    def check_tcp(self) -> tuple[str, dict]:
        assert self.settings is not None
        host, port = self.address.rsplit(":", 1)
        last: Exception | None = None
        stopped = False

        def probe():
            nonlocal last, stopped
            if self._describe().get("lastStatus") != "RUNNING":
                stopped = True
                return True
            try:
                self.connect_times.append(_connect_s(host, int(port), timeout=min(5.0, self._left_by_deadline() + 0.1)))
                return True
            except OSError as exc:
                last = exc
                return False

        self._wait(probe, self._left_by_deadline())
        if stopped:
            assert self._running_at is not None
            ran = time.monotonic() - self._running_at
            if ran < self.lease - 2 * self.poll_s:
                raise self._stopped_early("before it answered")
            # A node no head reaches waits its lease, then exits: unreachable, not crashed.
            raise self._unreachable(host, port, last, f"after {ran:.0f} s the node gave up waiting for a "
                                                      f"head (its lease is {self.lease:g} s) and exited")
        if not self.connect_times:
            raise self._unreachable(host, port, last)
        return f"{self.address} answers: connect {self.connect_times[0] * 1000:.1f} ms", {
            "connect_ms": self.connect_times[0] * 1000}

    def _unreachable(self, host: str, port: str, error: Exception | None, note: str = "") -> CheckFailed:
        """The node does not answer on its port: compare what the group admits with this address."""
        assert self.settings is not None
        mine = public_ip()
        group = next((r for r in find_managed(self._session(), self.settings) if r.kind == SECURITY_GROUP), None)
        admits = group.detail if group is not None else "unknown"
        detail = f"the node did not answer on port {port} at {host} ({error}); the security group: {admits}"
        if note:
            detail += f"; {note}"
        if mine is None:
            cause = "this machine's public address could not be learned, and the group may admit an old one"
            fix = "set STARBURST_HEAD_IP to this machine's public address and run 'starburst setup' again"
        elif f"from {mine}/32" not in admits:
            cause = f"your public address ({mine}) changed since setup: the security group doesn't admit it"
            fix = "run 'starburst setup' again"
        else:
            cause = (f"the group admits {mine} (checkip.amazonaws.com's view of this machine), but your "
                     "connections leave from another address (a VPN, a proxy, several NAT addresses), or a "
                     f"firewall here blocks outbound TCP port {port}")
            fix = (f"set STARBURST_HEAD_IP to the address your connections leave from and run 'starburst setup' "
                   f"again, or allow outbound TCP port {port}")
        return CheckFailed(detail, cause=cause, fix=fix, data={"admitted": admits, "public_ip": mine})

    def check_joined(self) -> tuple[str, dict]:
        import starburst

        def probe():
            try:
                if starburst.nodes():
                    return True
            except Exception:  # noqa: BLE001 - the head gave up (it says why in ECS's terms below)
                return "head-gone"
            return self._describe().get("lastStatus") != "RUNNING"

        outcome = self._wait(probe, self._left_by_deadline())
        assert self.settings is not None
        log_group = self.settings.log_group
        if outcome is True and self.task.get("lastStatus") == "RUNNING":
            assert self._launched_at is not None
            cold = time.monotonic() - self._launched_at
            return f"the node joined over mutual TLS; cold start {cold:.1f} s", {"cold_start_s": cold}
        if self.task.get("lastStatus") != "RUNNING":
            assert self._running_at is not None
            if time.monotonic() - self._running_at < self.lease - 2 * self.poll_s:
                raise self._stopped_early("before it joined")
            raise CheckFailed(f"the node answered TCP at {self.address}, but no head joined it within its lease "
                              f"({self.lease:g} s), so it exited",
                              cause="the head's TLS handshake with the node failed (a certificate, clock or "
                                    "version problem), or something between them cuts TLS (a proxy)",
                              fix=f"the node's log in CloudWatch log group {log_group} says which")
        report = read_report(self.report.cluster_id) if outcome == "head-gone" else None
        if report is not None and report.reason:
            raise CheckFailed(f"the head stopped before the node joined: {report.reason}")
        raise CheckFailed(f"the node answers TCP at {self.address} but did not join within the timeout",
                          cause="the TLS handshake failed (a certificate or clock problem), or the node is not "
                                "starburst's (another listener on the port)",
                          fix=f"its log is in CloudWatch log group {log_group}")

    def check_round_trip(self) -> tuple[str, dict]:
        import starburst

        host, port = self.address.rsplit(":", 1)
        noop = starburst.remote(num_cpus=CPU)(_noop)
        starburst.get(noop.remote(), timeout=FIRST_TASK_S)  # the first starts an executor
        rtts = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            starburst.get(noop.remote(), timeout=TASK_S)
            rtts.append(time.perf_counter() - start)
        connects = [_connect_s(host, int(port), 5.0) for _ in range(5)]
        rtt, tcp = statistics.median(rtts), statistics.median(connects)
        return (f"task {rtt * 1000:.1f} ms (median of {ROUND_TRIPS}) vs TCP connect {tcp * 1000:.1f} ms: "
                f"{max(0.0, rtt - tcp) * 1000:.1f} ms is starburst's"), {"rtt_ms": rtt * 1000, "connect_ms": tcp * 1000}

    def check_s3(self) -> tuple[str, dict]:
        import starburst

        result = starburst.get(starburst.remote(num_cpus=CPU)(_s3_round_trip).remote(S3_BYTES), timeout=S3_S)
        if not result["same"]:
            raise CheckFailed("the bytes read back from S3 differ from those written", fix="run doctor again")
        mib = result["bytes"] / 2**20
        up, down = mib / max(result["put_s"], 1e-6), mib / max(result["get_s"], 1e-6)
        return (f"{mib:.0f} MiB up in {result['put_s']:.2f} s ({up:.0f} MiB/s), down in {result['get_s']:.2f} s "
                f"({down:.0f} MiB/s)"), {"bytes": result["bytes"], "up_mib_s": up, "down_mib_s": down}

    def check_lease(self) -> tuple[str, dict]:
        """Kill the head, as a laptop crash would: the node must stop itself within its lease."""
        assert self._head_pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._head_pid, signal.SIGKILL)
        killed = time.monotonic()
        self._wait(lambda: self._describe().get("desiredStatus") == "STOPPED", self.lease + 60.0)
        if self.task.get("desiredStatus") != "STOPPED":
            raise CheckFailed(f"the node still runs {time.monotonic() - killed:.0f} s after its head vanished "
                              f"(lease {self.lease:g} s)", cause="the node's lease did not end it",
                              fix="'starburst down --all' stops such tasks; please report this")
        took = time.monotonic() - killed
        why = self.task.get("stoppedReason", "")
        if "exited" not in why.lower():
            raise CheckFailed(f"the task was stopped, but not by its node's exit: {why}",
                              cause="something else stopped it before the lease ran out", fix="run doctor again")
        return f"head killed: the node stopped itself after {took:.1f} s (lease {self.lease:g} s)", {
            "stopped_after_s": took, "lease_s": self.lease}

    def check_stop(self) -> tuple[str, dict]:
        """Stop whatever of the cluster is still running; ECS must confirm STOPPED. Always runs."""
        import starburst
        from starburst.driver import process

        assert self.settings is not None
        if not self.report.cluster_id:  # interrupted inside init(): the head may be up all the same
            head = process.find_head()
            self.report.cluster_id = head.cluster_id if head is not None and head.provider == "fargate" else ""
        # The driver first: if the head still runs, it stops its tasks as at any shutdown.
        quiet = logging.getLogger("starburst")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # after the lease check the head left no report: expected
        try:
            starburst.shutdown()
        finally:
            quiet.setLevel(level)
        ecs = self._ecs()
        cluster_id = self.report.cluster_id
        if cluster_id:
            for arn in ecs.list_tasks(cluster=self.settings.ecs_cluster, startedBy=cluster_id,
                                      desiredStatus="RUNNING")["taskArns"]:
                ecs.stop_task(cluster=self.settings.ecs_cluster, task=arn, reason="starburst doctor: done")
            self._delete_leftovers(cluster_id)
        if not self.task_arn:
            self._stopped_at = time.monotonic()
            self._bill()
            return "no task was started", {}

        def stopped():
            return self._describe().get("lastStatus") == "STOPPED"

        confirmed = self._wait(stopped, self.stop_timeout)
        self._stopped_at = time.monotonic()
        cost = self._bill()
        left = ecs.list_tasks(cluster=self.settings.ecs_cluster, startedBy=cluster_id,
                              desiredStatus="RUNNING")["taskArns"] if cluster_id else []
        data = {"last_status": self.task.get("lastStatus"), "cost_usd": cost, "budget_usd": self.budget}
        bill = f"cost {format_cost(cost)} (budget {format_cost(self.budget)})"
        if left:
            raise CheckFailed(f"tasks still running: {', '.join(left)}", fix="run 'starburst down --all'", data=data)
        if cost > self.budget:
            raise CheckFailed(f"{bill}: over the budget", cause="a step took far longer than its timeout", data=data)
        if not confirmed:
            raise Warned(f"StopTask accepted (desired STOPPED) but ECS still says {self.task.get('lastStatus')} after "
                         f"{self.stop_timeout:g} s; {bill}", fix="'starburst down --all' later confirms", data=data)
        return f"ECS confirms STOPPED ({self.task.get('stoppedReason', '')}); {bill}", data

    def _delete_leftovers(self, cluster_id: str) -> None:
        """What a killed head leaves in its S3 prefix (the TLS bundle); the lifecycle rule is the backstop."""
        assert self.settings is not None
        if not self.report.account:
            return
        from starburst.store.s3 import S3Store

        bucket = self.settings.bucket_name(self.report.account)
        s3 = self._session().client("s3", region_name=self.settings.region)
        with contextlib.suppress(Exception):
            store = S3Store(f"s3://{bucket}/{self.settings.object_prefix}/{cluster_id}", client=s3,
                            cache_bytes=0, cache_dir="")
            try:
                store.delete_prefix()
            finally:
                store.close()

    def _bill(self) -> float:
        """What the task cost: from launch to ECS's confirmed stop, billed as Fargate bills."""
        assert self._launched_at is not None and self._stopped_at is not None
        cost = task_cost(self._stopped_at - self._launched_at, CPU, MEMORY_GB, self._rates()) if self.task_arn else 0.0
        self.report.cost = cost
        return cost


def run_doctor(*, as_json: bool = False, print_=print, **options: Any) -> DoctorReport:
    """Run every check, printing the checklist as it goes (or, ``as_json``, one JSON document at
    the end). Returns the report; ``report.ok`` is the exit status."""
    if not as_json:
        print_(f"starburst doctor: one {CPU:g} vCPU / {MEMORY} Fargate task, budget "
               f"{format_cost(options.get('budget', BUDGET))}")
    doctor = Doctor(say=(lambda check: None) if as_json else (lambda check: print_(format_check(check))),
                    **options)
    report = doctor.run()
    print_(json.dumps(report.to_json(), indent=2) if as_json else report.summary())
    return report


__all__ = ["Doctor", "DoctorReport", "Check", "run_doctor", "format_check", "BUDGET"]
