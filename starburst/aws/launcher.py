"""Launching starburst nodes as Fargate tasks, finding their addresses, and stopping them.

``FargateLauncher`` is the head's handle on the nodes of one cluster (one ``cluster_id``) in the ECS
cluster that ``provision.setup()`` created::

    with FargateLauncher(session, settings, cluster_id, image, size=(4096, 8192)) as launcher:
        arns = launcher.launch(50)           # RunTask, at most 10 per call, with backoff
        print(arns.message)                  # "quota allows 12 of 50 workers ...: waves"
        addresses = launcher.addresses(arns) # {task arn: "ip:port"} once the tasks have an IP
    # on exit (normal or exception): every task this launcher started is stopped

What each node gets:

- a task definition per size, architecture and image, family
  ``{name}-{cpu}-{memory}-{arch}-{sha256(image)[:12]}``: awsvpc networking, one essential container
  ``node`` with the image and the node port, the execution and task roles of setup, logs to the log
  group, the CPU architecture, tags. Registered once; found again on later runs.
- RunTask with a capacity-provider strategy (``FARGATE`` or ``FARGATE_SPOT``), the default VPC's
  subnets, setup's security group, a public IP (the head dials the node), ``startedBy`` the cluster
  id, the tags ``starburst:managed=true`` and ``starburst:cluster={cluster_id}``, and environment
  overrides (``STARBURST_CLUSTER_ID``, ``STARBURST_LEASE_S``, ``STARBURST_NODE_PORT``, ...). No AWS
  credentials ever go into a task: the task role grants what it needs.

Launch failures surface as ``LaunchError`` naming the reason; throttling and capacity shortages are
retried with exponential backoff and jitter first. A failed launch leaves no task behind: whatever
it had started is stopped before the error is raised. ``find_orphans`` / ``stop_orphans`` find and
stop every starburst task in the ECS cluster, of any cluster id (``starburst down --all``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Optional

from botocore.config import Config
from botocore.exceptions import ClientError

from .pricing import CostMeter, format_cost
from .quotas import QuotaSource, WavePlan, plan_waves
from ._errors import error_code as _code
from .settings import CLUSTER_TAG, MANAGED_TAG, Settings, tag_dict
from .sizes import ARCHITECTURES, FARGATE_SIZES, UNITS_PER_VCPU, format_size, normalize_arch

log = logging.getLogger(__name__)

#: The one container of a node's task definition.
CONTAINER_NAME = "node"
#: RunTask starts at most this many tasks per call.
MAX_PER_RUN_TASK = 10
#: DescribeTasks takes at most this many tasks per call.
MAX_PER_DESCRIBE = 100
#: Seconds a node keeps running without hearing from its head (the node enforces it).
DEFAULT_LEASE_S = 180.0
#: Seconds between SIGTERM and SIGKILL when a task stops (Fargate's maximum): time to drain.
STOP_TIMEOUT_S = 120
#: How tags reach a task: the task definition's are propagated, the RunTask ones are added.
PROPAGATE_TAGS = "NONE"  # our tags are passed explicitly; propagating would repeat keys

#: Error codes of an API call that mean "try again later".
RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "ServerException", "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
})
#: Words of a RunTask ``failures`` reason that mean the capacity is short for now.
_CAPACITY_WORDS = ("capacity is unavailable", "capacity unavailable", "insufficient capacity",
                   "resource:cpu", "resource:memory", "throttl", "rate exceeded")
#: Environment variables that must never go into a task.
FORBIDDEN_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                           "AWS_SECURITY_TOKEN"})

# Our own retries (with the injectable sleep) instead of botocore's hidden ones.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 1})


class LaunchError(RuntimeError):
    """Nodes could not be launched (or found); the message names the reason. Nothing this launch
    started is left running."""

    def __init__(self, message: str, reasons: Iterable[str] = ()):
        super().__init__(message)
        self.reasons = list(reasons)


class BudgetError(LaunchError):
    """Launching would take the cluster past ``max_cost``."""


class Launched(list):
    """The task ARNs a ``launch()`` started (a list), with what the quota allowed."""

    def __init__(self, arns: Iterable[str] = (), requested: int = 0,
                 plan: Optional[WavePlan] = None):
        super().__init__(arns)
        self.requested = requested
        #: The quota plan, when a quota source was given.
        self.plan = plan

    @property
    def waves(self) -> bool:
        """Whether fewer workers started than asked for, so the work runs in waves."""
        return self.plan is not None and not self.plan.fits

    @property
    def message(self) -> str:
        """A sentence for the user: what was launched and, when the quota is short, the waves."""
        noun = "worker" if len(self) == 1 else "workers"
        line = f"launched {len(self)} of {self.requested} {noun}"
        if self.plan is not None:
            line += f"; {self.plan.message}"
        return line


def new_cluster_id(settings: Settings) -> str:
    """A fresh cluster id: ``{name}-{12 hex digits}`` (the ``startedBy`` of its tasks)."""
    return f"{settings.name}-{uuid.uuid4().hex[:12]}"


def _message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", "") or str(exc)


def _client(session, service: str, region: str):
    return session.client(service, region_name=region, config=_CLIENT_CONFIG)


def default_address_resolver(ec2) -> Callable[[list[str]], dict[str, str]]:
    """A resolver reading each ENI's ``Association.PublicIp`` (ENIs without one are left out)."""

    def resolve(eni_ids: list[str]) -> dict[str, str]:
        if not eni_ids:
            return {}
        out = {}
        answer = ec2.describe_network_interfaces(NetworkInterfaceIds=list(eni_ids))
        for eni in answer.get("NetworkInterfaces", []):
            ip = eni.get("Association", {}).get("PublicIp")
            if ip:
                out[eni["NetworkInterfaceId"]] = ip
        return out

    return resolve


def stop_reasons(described: Iterable[dict]) -> dict[str, str]:
    """``{task arn: why}`` of the described tasks that stopped or are stopping."""
    return {t["taskArn"]: t.get("stoppedReason") or t.get("stopCode") or "stopped"
            for t in described if "STOPPED" in (t.get("lastStatus"), t.get("desiredStatus"))}


def eni_of(task: dict) -> Optional[str]:
    """The id of a task's network interface (its awsvpc attachment), or None before it has one."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        for detail in attachment.get("details", []):
            if detail.get("name") == "networkInterfaceId":
                return detail.get("value")
    return None


class _Retrying:
    """AWS calls retried with exponential backoff and jitter while AWS throttles or is briefly
    unavailable (shared by the launcher and the orphan finder)."""

    sleep: Callable[[float], None]
    rng: random.Random
    max_attempts: int
    backoff_base: float
    backoff_cap: float

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half the step plus up to the other half at random."""
        step = min(self.backoff_cap, self.backoff_base * (2 ** attempt))
        return step / 2 + self.rng.uniform(0, step / 2)

    def _call(self, method: Callable, **kwargs) -> Any:
        """An API call, retried with backoff while AWS throttles or is briefly unavailable."""
        for attempt in range(self.max_attempts):
            try:
                return method(**kwargs)
            except ClientError as exc:
                if _code(exc) not in RETRYABLE_CODES or attempt == self.max_attempts - 1:
                    raise
                delay = self._backoff(attempt)
                log.info("%s: %s; retrying in %.1f s", method.__name__, _code(exc), delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class FargateLauncher(_Retrying):
    """Launches, locates and stops the Fargate tasks (nodes) of one starburst cluster.

    ``size`` is ``(cpu_units, memory_mib)``, a valid Fargate size (see ``sizes.validate_size``).
    ``quota_source``: read before each launch; only what fits is launched (``Launched.plan``).
    ``meter``: a ``CostMeter``; with a ``max_cost``, a launch that would pass it is refused, and
    every task started or stopped here is recorded. ``clock``/``sleep``: injectable for tests.
    ``address_resolver(eni_ids) -> {eni_id: ip}``: default reads the ENIs' public IPs.
    """

    def __init__(
        self,
        session,
        settings: Settings,
        cluster_id: str,
        image: str,
        size: tuple[int, int] = (1024, 2048),
        arch: str = "x86_64",
        spot: bool = False,
        quota_source: Optional[QuotaSource] = None,
        meter: Optional[CostMeter] = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        address_resolver: Optional[Callable[[list[str]], dict[str, str]]] = None,
        lease_s: float = DEFAULT_LEASE_S,
        env: Optional[dict[str, str]] = None,
        max_attempts: int = 6,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
        rng: Optional[random.Random] = None,
    ):
        cpu, memory = int(size[0]), int(size[1])
        if cpu not in FARGATE_SIZES or memory not in FARGATE_SIZES[cpu]:
            raise ValueError(f"size {size!r} is not a Fargate size (cpu units, memory MiB); "
                             "use sizes.validate_size() to get one")
        if not cluster_id or len(cluster_id) > 128:
            raise ValueError("cluster_id must be 1-128 characters (it is the tasks' startedBy)")
        if not image:
            raise ValueError("image must name a container image")
        bad = sorted(k for k in (env or {}) if k.upper() in FORBIDDEN_ENV)
        if bad:
            raise ValueError(f"no AWS credentials go into a task (the task role grants access): "
                             f"remove {', '.join(bad)} from env")
        self.session = session
        self.settings = settings
        self.cluster_id = cluster_id
        self.image = image
        self.cpu, self.memory = cpu, memory
        self.arch = normalize_arch(arch)
        self.spot = bool(spot)
        self.quota_source = quota_source
        self.meter = meter
        self.clock = clock
        self.sleep = sleep
        self.lease_s = float(lease_s)
        self.env = dict(env or {})
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self.rng = rng or random.Random()
        self.ecs = _client(session, "ecs", settings.region)
        self.ec2 = _client(session, "ec2", settings.region)
        self.iam = _client(session, "iam", settings.region)
        self.address_resolver = address_resolver or default_address_resolver(self.ec2)
        self.task_definition_arn: Optional[str] = None
        #: Every task this launcher started, and those it has stopped.
        self.launched: list[str] = []
        self.stopped: set[str] = set()
        #: The last launch's message (quota, waves), also logged.
        self.last_message = ""
        #: Set by ``close()``: a launch in progress starts no further batch (and stops what it
        #: started), so that a stop_all() after it misses nothing.
        self.closing = threading.Event()
        self._network: Optional[dict] = None

    # -- sizes and names -----------------------------------------------------------------------

    @property
    def vcpu(self) -> float:
        return self.cpu / UNITS_PER_VCPU

    @property
    def memory_gb(self) -> float:
        return self.memory / 1024

    @property
    def family(self) -> str:
        digest = hashlib.sha256(self.image.encode()).hexdigest()[:12]
        return f"{self.settings.name}-{self.cpu}-{self.memory}-{self.arch}-{digest}"

    @property
    def capacity_provider(self) -> str:
        return "FARGATE_SPOT" if self.spot else "FARGATE"

    @property
    def task_tags(self) -> dict[str, str]:
        return {MANAGED_TAG: "true", CLUSTER_TAG: self.cluster_id}

    # -- what setup created --------------------------------------------------------------------

    def _role_arn(self, name: str) -> str:
        try:
            return self.iam.get_role(RoleName=name)["Role"]["Arn"]
        except ClientError as exc:
            if _code(exc) == "NoSuchEntity":
                raise LaunchError(f"IAM role {name} not found: run 'starburst setup'") from exc
            raise

    def network(self) -> dict:
        """The awsvpc configuration: default VPC subnets, setup's security group, public IP."""
        if self._network is None:
            vpcs = self.ec2.describe_vpcs(
                Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise LaunchError(f"region {self.settings.region} has no default VPC: run "
                                  "'starburst setup'")
            vpc = vpcs[0]["VpcId"]
            subnets = self.ec2.describe_subnets(Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
            if not subnets:
                raise LaunchError(f"the default VPC {vpc} has no default subnets")
            groups = self.ec2.describe_security_groups(Filters=[
                {"Name": "vpc-id", "Values": [vpc]},
                {"Name": "group-name", "Values": [self.settings.security_group]},
                {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}])["SecurityGroups"]
            if not groups:
                raise LaunchError(f"security group {self.settings.security_group} not found in "
                                  f"the default VPC: run 'starburst setup'")
            self._network = {"awsvpcConfiguration": {
                "subnets": sorted(s["SubnetId"] for s in subnets),
                "securityGroups": [groups[0]["GroupId"]],
                "assignPublicIp": "ENABLED",
            }}
        return self._network

    # -- task definition -----------------------------------------------------------------------

    def _wanted_definition(self) -> dict:
        s = self.settings
        return {
            "family": self.family,
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "cpu": str(self.cpu),
            "memory": str(self.memory),
            "executionRoleArn": self._role_arn(s.execution_role),
            "taskRoleArn": self._role_arn(s.task_role),
            "runtimePlatform": {"cpuArchitecture": ARCHITECTURES[self.arch],
                                "operatingSystemFamily": "LINUX"},
            "containerDefinitions": [{
                "name": CONTAINER_NAME,
                "image": self.image,
                "essential": True,
                # The whole task's memory, as a soft reservation (no container limit below the
                # task's). Optional on Fargate, but moto's RunTask fails without a container-level
                # memory figure.
                "memoryReservation": self.memory,
                "portMappings": [{"containerPort": s.node_port, "hostPort": s.node_port,
                                  "protocol": "tcp"}],
                "environment": [{"name": "STARBURST_NODE_PORT", "value": str(s.node_port)}],
                "stopTimeout": STOP_TIMEOUT_S,
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": s.log_group,
                    "awslogs-region": s.region,
                    "awslogs-stream-prefix": CONTAINER_NAME,
                }},
            }],
            "tags": [{"key": MANAGED_TAG, "value": "true"},
                     {"key": "starburst:setup", "value": s.name}],
        }

    @staticmethod
    def _matches(found: dict, wanted: dict) -> bool:
        if found.get("status", "ACTIVE") != "ACTIVE":
            return False
        for key in ("networkMode", "cpu", "memory", "executionRoleArn", "taskRoleArn"):
            if str(found.get(key)) != str(wanted[key]):
                return False
        containers = found.get("containerDefinitions", [])
        if len(containers) != 1:
            return False
        have, want = containers[0], wanted["containerDefinitions"][0]
        ports = [p.get("containerPort") for p in have.get("portMappings", [])]
        options = have.get("logConfiguration", {}).get("options", {})
        return (have.get("name") == want["name"] and have.get("image") == want["image"]
                and ports == [want["portMappings"][0]["containerPort"]]
                and options.get("awslogs-group") == want["logConfiguration"]["options"]["awslogs-group"])

    def ensure_task_definition(self) -> str:
        """The ARN of this size/arch/image's task definition: the latest active revision of its
        family if it matches (image, port, roles, log group), else a newly registered one."""
        if self.task_definition_arn is not None:
            return self.task_definition_arn
        wanted = self._wanted_definition()
        try:
            found = self._call(self.ecs.describe_task_definition, taskDefinition=self.family,
                               include=["TAGS"])
        except ClientError as exc:
            if _code(exc) not in ("ClientException", "TaskDefinitionNotFoundException",
                                  "InvalidParameterException"):
                raise
            found = None
        if (found is not None and tag_dict(found.get("tags"), "key", "value").get(MANAGED_TAG) == "true"
                and self._matches(found["taskDefinition"], wanted)):
            self.task_definition_arn = found["taskDefinition"]["taskDefinitionArn"]
        else:
            answer = self._call(self.ecs.register_task_definition, **wanted)
            self.task_definition_arn = answer["taskDefinition"]["taskDefinitionArn"]
            log.info("registered task definition %s", self.task_definition_arn)
        return self.task_definition_arn

    # -- launching -----------------------------------------------------------------------------

    def _overrides(self) -> dict:
        env = {
            "STARBURST_CLUSTER_ID": self.cluster_id,
            "STARBURST_LEASE_S": f"{self.lease_s:g}",
            "STARBURST_NODE_PORT": str(self.settings.node_port),
            "STARBURST_NODE_CPUS": f"{self.vcpu:g}",
            "STARBURST_SPOT": "1" if self.spot else "0",
            **self.env,
        }
        return {"containerOverrides": [{
            "name": CONTAINER_NAME,
            "environment": [{"name": k, "value": v} for k, v in env.items()],
        }]}

    def _check_budget(self, n: int) -> None:
        meter = self.meter
        if meter is None or n == 0 or meter.can_launch(n, self.vcpu, self.memory_gb, self.arch, self.spot):
            return
        assert meter.max_cost is not None  # can_launch says yes to anything without a budget
        spent = meter.cost_so_far()
        commit = meter.launch_cost(n, self.vcpu, self.memory_gb, self.arch, self.spot)
        raise BudgetError(
            f"max_cost {format_cost(meter.max_cost)} reached: {format_cost(spent)} spent so far "
            f"and {n} more {format_size(self.cpu, self.memory)} tasks would commit "
            f"{format_cost(commit)} (their first minute); nothing was launched")

    def _plan(self, n: int) -> Optional[WavePlan]:
        if self.quota_source is None:
            return None
        limit = self.quota_source.fargate_vcpu_limit(self.spot)
        in_use = self.quota_source.current_vcpu_usage(self.spot)
        return plan_waves(n, self.vcpu, limit, in_use, self.spot)

    def launch(self, n: int) -> Launched:
        """Start ``n`` nodes (fewer when the quota is short); returns their task ARNs.

        Raises ``BudgetError`` when ``max_cost`` would be passed, ``LaunchError`` when RunTask
        fails after its retries; in either case nothing this call started is left running.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        plan = self._plan(n)
        count = n if plan is None else plan.workers
        result = Launched((), requested=n, plan=plan)
        if count == 0:
            self.last_message = result.message
            log.warning("%s", result.message)
            return result
        self._check_budget(count)
        task_definition = self.ensure_task_definition()
        started: list[str] = []
        try:
            remaining = count
            while remaining:
                self._check_open()
                batch = self._run_batch(task_definition, min(MAX_PER_RUN_TASK, remaining), started)
                remaining -= batch
        except BaseException as exc:
            self._cleanup_failed(started)
            if isinstance(exc, LaunchError):
                raise LaunchError(f"{exc} (stopped the {len(started)} task(s) this launch had "
                                  "started)", exc.reasons) from exc
            if isinstance(exc, ClientError):
                raise LaunchError(f"RunTask failed ({_code(exc)}): {_message(exc)} (stopped the "
                                  f"{len(started)} task(s) this launch had started)",
                                  [_code(exc)]) from exc
            raise
        result.extend(started)
        self.last_message = result.message
        (log.warning if result.waves else log.info)("%s", result.message)
        return result

    def _run_batch(self, task_definition: str, want: int, started: list[str]) -> int:
        """One RunTask batch of ``want`` tasks, retrying capacity shortages for what is missing;
        the ARNs go into ``started`` as soon as they exist. Returns ``want``."""
        missing = want
        for attempt in range(self.max_attempts):
            answer = self._call(
                self.ecs.run_task,
                cluster=self.settings.ecs_cluster,
                taskDefinition=task_definition,
                count=missing,
                capacityProviderStrategy=[{"capacityProvider": self.capacity_provider,
                                           "weight": 1, "base": 0}],
                networkConfiguration=self.network(),
                startedBy=self.cluster_id,
                tags=[{"key": k, "value": v} for k, v in self.task_tags.items()],
                propagateTags=PROPAGATE_TAGS,
                overrides=self._overrides(),
                enableECSManagedTags=True,
            )
            arns = [t["taskArn"] for t in answer.get("tasks", [])]
            self._record_started(arns, started)
            missing -= len(arns)
            failures = answer.get("failures", [])
            if missing <= 0:
                return want
            reasons = sorted({f"{f.get('reason', 'unknown')}"
                              + (f" ({f['detail']})" if f.get("detail") else "")
                              for f in failures}) or ["RunTask started fewer tasks than asked"]
            retryable = failures and all(
                any(w in f.get("reason", "").lower() for w in _CAPACITY_WORDS) for f in failures)
            if not retryable or attempt == self.max_attempts - 1:
                tried = f" after {attempt + 1} attempts" if retryable else ""
                raise LaunchError(f"Fargate could not start {missing} of {want} "
                                  f"{self.capacity_provider} tasks{tried}: " + "; ".join(reasons),
                                  reasons)
            delay = self._backoff(attempt)
            log.info("RunTask: %s; retrying %d in %.1f s", "; ".join(reasons), missing, delay)
            self.sleep(delay)
            self._check_open()
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_open(self) -> None:
        if self.closing.is_set():
            raise LaunchError("the cluster is shutting down: launch abandoned", ["closing"])

    def _record_started(self, arns: list[str], started: list[str]) -> None:
        now = self.clock()
        for arn in arns:
            started.append(arn)
            self.launched.append(arn)
            if self.meter is not None:
                try:
                    self.meter.task_started(arn, self.vcpu, self.memory_gb, self.arch, self.spot)
                except ValueError:
                    pass
        log.debug("started %d tasks at %.1f", len(arns), now)

    def _cleanup_failed(self, started: list[str]) -> None:
        if not started:
            return
        try:
            self.stop(started, reason="starburst: launch failed")
        except Exception:
            log.exception("stopping the tasks of a failed launch; left: %s",
                          [a for a in started if a not in self.stopped])

    # -- addresses -----------------------------------------------------------------------------

    def describe(self, task_arns: Iterable[str]) -> list[dict]:
        """DescribeTasks for any number of tasks (with tags)."""
        arns = list(task_arns)
        out: list[dict] = []
        for i in range(0, len(arns), MAX_PER_DESCRIBE):
            answer = self._call(self.ecs.describe_tasks, cluster=self.settings.ecs_cluster,
                                tasks=arns[i:i + MAX_PER_DESCRIBE], include=["TAGS"])
            out += answer.get("tasks", [])
        return out

    def addresses(self, task_arns: Iterable[str]) -> dict[str, str]:
        """``{task arn: "ip:port"}`` for the tasks whose network interface has an address now;
        tasks still provisioning (no ENI or IP yet) or stopped are left out."""
        return self.addresses_of(self.describe(task_arns))

    def addresses_of(self, described: Iterable[dict]) -> dict[str, str]:
        """``addresses()`` of tasks already described (no second DescribeTasks)."""
        stopped = stop_reasons(described := list(described))
        by_eni: dict[str, str] = {}
        for task in described:
            if task["taskArn"] in stopped:
                continue
            eni = eni_of(task)
            if eni:
                by_eni[eni] = task["taskArn"]
        ips = self.address_resolver(list(by_eni)) if by_eni else {}
        port = self.settings.node_port
        return {by_eni[eni]: f"{ip}:{port}" for eni, ip in ips.items() if eni in by_eni}

    def wait_for_addresses(self, task_arns: Iterable[str], timeout: float = 300.0,
                           poll: float = 5.0) -> dict[str, str]:
        """``addresses()`` of all ``task_arns``, polling until each has one; raises LaunchError
        naming the stop reason when a task stops first (image pull, spot capacity, ...), or
        when ``timeout`` passes."""
        arns = list(task_arns)
        deadline = self.clock() + timeout
        while True:
            described = self.describe(arns)
            stopped = stop_reasons(described)
            if stopped:
                reasons = sorted(set(stopped.values()))
                raise LaunchError(f"{len(stopped)} of {len(arns)} nodes stopped before they could "
                                  "be reached: " + "; ".join(reasons), reasons)
            found = self.addresses_of(described)
            if len(found) == len(arns):
                return found
            if self.clock() >= deadline:
                raise LaunchError(f"{len(arns) - len(found)} of {len(arns)} nodes had no address "
                                  f"after {timeout:g} s")
            self.sleep(poll)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, task_arns: Iterable[str], reason: str = "starburst: stopped by the head") -> list[str]:
        """Stop these tasks (ones already stopped or gone are fine); returns those stopped. Every
        task is tried even when some fail (network errors included); then LaunchError names the
        ones left running."""
        from botocore.exceptions import BotoCoreError

        done = []
        errors = []
        for arn in list(task_arns):
            try:
                self._call(self.ecs.stop_task, cluster=self.settings.ecs_cluster, task=arn,
                           reason=reason[:255])
            except ClientError as exc:
                if _code(exc) not in ("InvalidParameterException", "ClientException"):
                    errors.append(f"{arn}: {_code(exc)}")
                    continue
                log.debug("stop %s: %s", arn, _message(exc))
            except BotoCoreError as exc:  # no connection, expired credentials...
                errors.append(f"{arn}: {exc}")
                continue
            self.stopped.add(arn)
            done.append(arn)
            if self.meter is not None:
                try:
                    self.meter.task_stopped(arn)
                except KeyError:
                    pass
        if errors:
            raise LaunchError(f"could not stop {len(errors)} task(s) (each exits by itself after its "
                              f"lease; 'starburst down --all' retries): " + "; ".join(errors), errors)
        return done

    def running(self) -> list[str]:
        """Tasks of this cluster id that ECS still wants running."""
        return _list_tasks(self, self.settings.ecs_cluster, startedBy=self.cluster_id)

    def close(self) -> None:
        """No new launch batches from now on (a launch in progress gives up and stops its tasks)."""
        self.closing.set()

    def stop_all(self, reason: str = "starburst: cluster shut down") -> list[str]:
        """Stop every task started by this cluster id: those this launcher started first, then any
        other ECS still lists for it (when listing works)."""
        from botocore.exceptions import BotoCoreError

        self.close()
        failed: Optional[LaunchError] = None
        try:
            stopped = self.stop([a for a in self.launched if a not in self.stopped], reason)
        except LaunchError as exc:
            failed, stopped = exc, []
        try:
            others = [a for a in self.running() if a not in self.stopped]
            stopped += self.stop(others, reason)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not list the cluster's tasks (%s)", exc)
        if failed is not None:
            raise failed
        return stopped

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> FargateLauncher:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        why = "cluster shut down" if exc_type is None else f"head exited on {exc_type.__name__}"
        try:
            self.stop_all(reason=f"starburst: {why}")
        except Exception:
            if exc_type is None:
                raise
            log.exception("stopping the cluster's tasks")


def _list_tasks(caller, cluster: str, **filters) -> list[str]:
    """Every task ARN in ``cluster`` with desiredStatus RUNNING matching ``filters``."""
    out: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"cluster": cluster, "desiredStatus": "RUNNING", **filters}
        if token:
            kwargs["nextToken"] = token
        answer = caller._call(caller.ecs.list_tasks, **kwargs)
        out += answer.get("taskArns", [])
        token = answer.get("nextToken")
        if not token:
            return out


class _Orphans(_Retrying):
    """Enough of a launcher for ``find_orphans`` / ``stop_orphans`` (no image, no size)."""

    def __init__(self, session, settings: Settings, sleep: Callable[[float], None]):
        self.settings = settings
        self.ecs = _client(session, "ecs", settings.region)
        self.sleep = sleep
        self.rng = random.Random()
        self.max_attempts = 6
        self.backoff_base, self.backoff_cap = 1.0, 30.0


def _is_cluster_missing(exc: ClientError) -> bool:
    return _code(exc) in ("ClusterNotFoundException",)


def find_orphans(session, settings: Settings, exclude: Iterable[str] = (),
                 sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Every starburst task still running in the ECS cluster, of any cluster id: tagged
    ``starburst:managed=true`` or started by a ``{name}-`` cluster id. ``exclude``: cluster ids
    to leave alone (a head that is still alive)."""
    o = _Orphans(session, settings, sleep)
    try:
        arns = _list_tasks(o, settings.ecs_cluster)
    except ClientError as exc:
        if _is_cluster_missing(exc):
            return []
        raise
    skip = set(exclude)
    prefix = f"{settings.name}-"
    found = []
    for i in range(0, len(arns), MAX_PER_DESCRIBE):
        answer = o._call(o.ecs.describe_tasks, cluster=settings.ecs_cluster,
                         tasks=arns[i:i + MAX_PER_DESCRIBE], include=["TAGS"])
        for task in answer.get("tasks", []):
            if task.get("desiredStatus") == "STOPPED":
                continue
            tags = tag_dict(task.get("tags"), "key", "value")
            started_by = task.get("startedBy", "")
            if tags.get(CLUSTER_TAG) in skip or started_by in skip:
                continue
            if tags.get(MANAGED_TAG) == "true" or started_by.startswith(prefix):
                found.append(task["taskArn"])
    return found


def stop_orphans(session, settings: Settings, exclude: Iterable[str] = (),
                 reason: str = "starburst down --all",
                 sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Stop what ``find_orphans`` finds; returns the ARNs stopped."""
    arns = find_orphans(session, settings, exclude, sleep)
    o = _Orphans(session, settings, sleep)
    done, errors = [], []
    for arn in arns:
        try:
            o._call(o.ecs.stop_task, cluster=settings.ecs_cluster, task=arn, reason=reason[:255])
            done.append(arn)
        except ClientError as exc:
            errors.append(f"{arn}: {_code(exc)}")
    if errors:
        raise LaunchError(f"stopped {len(done)} orphaned tasks; could not stop " + "; ".join(errors),
                          errors)
    return done


__all__ = [
    "FargateLauncher", "Launched", "LaunchError", "BudgetError", "find_orphans", "stop_orphans",
    "new_cluster_id", "default_address_resolver", "MAX_PER_RUN_TASK", "CONTAINER_NAME",
]
