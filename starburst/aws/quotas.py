"""The Fargate vCPU quotas: reading them, planning waves when they are short, asking for more.

An AWS account may run at most so many Fargate vCPUs at once, one quota for on-demand capacity
(Service Quotas code ``L-3032A538``) and one for spot (``L-36FBB829``); new accounts start low.
Before launching, the head reads the quota and the current usage (the ``AWS/Usage`` CloudWatch
metric the quota is tracked by). If the cluster doesn't fit, it launches what fits and the queue
drains through those workers in waves (``plan_waves`` says so, with the numbers), and it offers an
increase request with a rounded value (``suggest_quota``). A request that was filed is remembered
in ``$STARBURST_HOME/quota-requests.json`` so ``starburst quota`` can show its status later.

``QuotaSource`` is the interface; ``ServiceQuotasSource`` implements it with boto3 (the
``service-quotas`` and ``cloudwatch`` clients) and ``FakeQuotaSource`` in memory, for tests and for
rehearsals without AWS (moto has no Fargate quotas).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pathlib
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol

from starburst._files import write_atomic
from starburst.aws._errors import error_code
from starburst.aws.sizes import format_number

SERVICE_CODE = "fargate"
#: Service Quotas codes: "Fargate On-Demand vCPU resource count" and "Fargate Spot vCPU resource count".
QUOTA_CODES = {False: "L-3032A538", True: "L-36FBB829"}
#: Request states in which AWS is still working on it.
OPEN_STATUSES = frozenset({"PENDING", "CASE_OPENED"})
#: Values ``suggest_quota`` rounds up to; past the last one it continues 1-2-5 (5000, 10000, ...).
QUOTA_STEPS = (32, 64, 128, 256, 512, 1000, 2000)

STATE_FILE_NAME = "quota-requests.json"


def _kind(spot: bool) -> str:
    return "spot" if spot else "on-demand"


@dataclass
class QuotaRequest:
    """A quota increase request, as Service Quotas reports it."""

    id: str
    spot: bool
    desired: float
    status: str
    region: str = ""
    case_id: str = ""
    created: str = ""

    @property
    def is_open(self) -> bool:
        """Whether AWS is still deciding (PENDING or CASE_OPENED)."""
        return self.status in OPEN_STATUSES

    def text(self) -> str:
        """``"request for 256 spot vCPU: CASE_OPENED (case 1234)"``."""
        line = f"request for {format_number(self.desired)} {_kind(self.spot)} vCPU: {self.status}"
        if self.case_id:
            line += f" (case {self.case_id})"
        if self.created:
            line += f", filed {self.created}"
        return line


class QuotaSource(Protocol):
    """Where the Fargate vCPU quotas and their usage come from."""

    def fargate_vcpu_limit(self, spot: bool) -> float:
        """The account's quota of concurrently running Fargate vCPUs (on-demand or spot)."""
        ...

    def current_vcpu_usage(self, spot: bool) -> float:
        """vCPUs of Fargate tasks running now in the account and region."""
        ...

    def request_increase(self, spot: bool, desired: float) -> QuotaRequest:
        """File (or find the already open) increase request to ``desired`` vCPU."""
        ...

    def pending_request(self, spot: bool) -> Optional[QuotaRequest]:
        """The open increase request, if any."""
        ...


class QuotaRequestStore:
    """The last increase request per region and capacity, in a small JSON file.

    Default file: ``$STARBURST_HOME/quota-requests.json`` (resolved when first used).
    """

    def __init__(self, path: Optional[pathlib.Path] = None):
        self._path = pathlib.Path(path) if path is not None else None
        self._lock = threading.Lock()

    @property
    def path(self) -> pathlib.Path:
        """The JSON file."""
        if self._path is None:
            from starburst import config

            self._path = config.home() / STATE_FILE_NAME
        return self._path

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        requests = data.get("requests") if isinstance(data, dict) else None
        return requests if isinstance(requests, dict) else {}

    def _save(self, requests: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": 1, "requests": requests}, indent=2, sort_keys=True)
        write_atomic(self.path, [data.encode()])

    @staticmethod
    def _key(region: str, spot: bool) -> str:
        return f"{region}/{_kind(spot)}"

    def get(self, region: str, spot: bool) -> Optional[QuotaRequest]:
        """The remembered request for ``region`` and capacity, if any."""
        with self._lock:
            entry = self._load().get(self._key(region, spot))
        if not entry:
            return None
        try:
            return QuotaRequest(**entry)
        except TypeError:  # a file from another version: forget it
            return None

    def put(self, request: QuotaRequest) -> None:
        """Remember ``request`` (replacing the one for its region and capacity)."""
        with self._lock:
            requests = self._load()
            requests[self._key(request.region, request.spot)] = asdict(request)
            self._save(requests)

    def forget(self, region: str, spot: bool) -> None:
        """Drop the remembered request for ``region`` and capacity."""
        with self._lock:
            requests = self._load()
            if requests.pop(self._key(region, spot), None) is not None:
                self._save(requests)


def _request_from_api(entry: dict, spot: bool, region: str) -> QuotaRequest:
    created = entry.get("Created")
    if isinstance(created, _dt.datetime):
        created = created.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return QuotaRequest(
        id=str(entry.get("Id", "")),
        spot=spot,
        desired=float(entry.get("DesiredValue", 0.0)),
        status=str(entry.get("Status", "PENDING")),
        region=region,
        case_id=str(entry.get("CaseId") or ""),
        created=str(created or ""),
    )


class ServiceQuotasSource:
    """``QuotaSource`` backed by AWS: Service Quotas for limits and requests, CloudWatch's
    ``AWS/Usage`` ``ResourceCount`` metric for current usage.

    Pass clients (tests use botocore's Stubber) or a boto3 session and region.
    """

    #: Dimensions of Fargate's vCPU usage metric (used until the quota names its own).
    USAGE_NAMESPACE = "AWS/Usage"
    USAGE_METRIC = "ResourceCount"

    def __init__(
        self,
        region: Optional[str] = None,
        session: Any = None,
        client: Any = None,
        cloudwatch: Any = None,
        store: Optional[QuotaRequestStore] = None,
        clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc),
    ):
        self._session = session
        self._region = region
        self._client = client
        self._cloudwatch = cloudwatch
        self.store = store if store is not None else QuotaRequestStore()
        self.clock = clock
        self._usage_metric: dict[bool, dict] = {}

    def _make(self, service: str) -> Any:
        import boto3

        session = self._session or boto3.session.Session()
        return session.client(service, region_name=self._region)

    @property
    def client(self) -> Any:
        """The boto3 ``service-quotas`` client."""
        if self._client is None:
            self._client = self._make("service-quotas")
        return self._client

    @property
    def cloudwatch(self) -> Any:
        """The boto3 ``cloudwatch`` client."""
        if self._cloudwatch is None:
            self._cloudwatch = self._make("cloudwatch")
        return self._cloudwatch

    @property
    def region(self) -> str:
        """The region the quotas are read in."""
        return self._region or self.client.meta.region_name

    def fargate_vcpu_limit(self, spot: bool) -> float:
        """The applied quota; the AWS default when the account has never changed it."""
        from botocore.exceptions import ClientError

        code = QUOTA_CODES[bool(spot)]
        try:
            quota = self.client.get_service_quota(ServiceCode=SERVICE_CODE, QuotaCode=code)["Quota"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchResourceException":
                raise
            quota = self.client.get_aws_default_service_quota(ServiceCode=SERVICE_CODE, QuotaCode=code)[
                "Quota"
            ]
        if quota.get("UsageMetric"):
            self._usage_metric[bool(spot)] = quota["UsageMetric"]
        return float(quota["Value"])

    def _usage_query(self, spot: bool) -> tuple[str, str, list[dict]]:
        metric = self._usage_metric.get(bool(spot))
        if metric and metric.get("MetricDimensions"):
            dims = [{"Name": k, "Value": v} for k, v in sorted(metric["MetricDimensions"].items())]
            return metric.get("MetricNamespace", self.USAGE_NAMESPACE), metric.get(
                "MetricName", self.USAGE_METRIC
            ), dims
        dims = [
            {"Name": "Class", "Value": "Standard/Spot" if spot else "Standard/OnDemand"},
            {"Name": "Resource", "Value": "vCPU"},
            {"Name": "Service", "Value": "Fargate"},
            {"Name": "Type", "Value": "Resource"},
        ]
        return self.USAGE_NAMESPACE, self.USAGE_METRIC, dims

    def current_vcpu_usage(self, spot: bool) -> float:
        """The latest per-minute maximum of the usage metric over the last 10 minutes (0 if none:
        nothing has run lately)."""
        namespace, name, dims = self._usage_query(spot)
        now = self.clock()
        answer = self.cloudwatch.get_metric_statistics(
            Namespace=namespace,
            MetricName=name,
            Dimensions=dims,
            StartTime=now - _dt.timedelta(minutes=10),
            EndTime=now,
            Period=60,
            Statistics=["Maximum"],
        )
        points = answer.get("Datapoints", [])
        if not points:
            return 0.0
        latest = max(points, key=lambda p: p["Timestamp"])
        return float(latest.get("Maximum", 0.0))

    def request_increase(self, spot: bool, desired: float) -> QuotaRequest:
        """File a request to raise the quota to ``desired`` vCPU; an open request for at least as
        much is returned instead of filing another (AWS allows one open request per quota)."""
        from botocore.exceptions import ClientError

        open_request = self.pending_request(spot)
        if open_request is not None and open_request.desired >= desired:
            return open_request
        try:
            answer = self.client.request_service_quota_increase(
                ServiceCode=SERVICE_CODE, QuotaCode=QUOTA_CODES[bool(spot)], DesiredValue=float(desired)
            )
        except ClientError as exc:
            if error_code(exc) == "ResourceAlreadyExistsException":
                found = self._find_open(spot)
                if found is not None:
                    return found
            raise
        request = _request_from_api(answer["RequestedQuota"], spot, self.region)
        self.store.put(request)
        return request

    def pending_request(self, spot: bool) -> Optional[QuotaRequest]:
        """The open request: the remembered one refreshed from AWS, else one found in the quota's
        request history (filed from the console, say). A closed request stays remembered with its
        final status (``last_request``) until another one opens."""
        remembered = self.store.get(self.region, spot)
        if remembered is not None and remembered.id:
            answer = self.client.get_requested_service_quota_change(RequestId=remembered.id)
            current = _request_from_api(answer["RequestedQuota"], spot, self.region)
            self.store.put(current)
            if current.is_open:
                return current
        return self._find_open(spot)

    def last_request(self, spot: bool) -> Optional[QuotaRequest]:
        """The remembered request (open or not), without asking AWS."""
        return self.store.get(self.region, spot)

    def _find_open(self, spot: bool) -> Optional[QuotaRequest]:
        candidates = []
        token = None
        while True:
            kwargs = {"ServiceCode": SERVICE_CODE, "QuotaCode": QUOTA_CODES[bool(spot)]}
            if token:
                kwargs["NextToken"] = token
            answer = self.client.list_requested_service_quota_change_history_by_quota(**kwargs)
            candidates += [
                _request_from_api(entry, spot, self.region)
                for entry in answer.get("RequestedQuotas", [])
                if entry.get("Status") in OPEN_STATUSES
            ]
            token = answer.get("NextToken")
            if not token:
                break
        if not candidates:
            return None
        newest = max(candidates, key=lambda r: r.created)
        self.store.put(newest)
        return newest


class FakeQuotaSource:
    """An in-memory ``QuotaSource``: limits and usage are plain attributes; requests stay open
    until ``resolve`` approves or denies them. ``store`` (optional) is written like the real one's."""

    def __init__(
        self,
        on_demand_limit: float = 6.0,
        spot_limit: float = 6.0,
        on_demand_usage: float = 0.0,
        spot_usage: float = 0.0,
        region: str = "us-east-1",
        store: Optional[QuotaRequestStore] = None,
    ):
        self.limits = {False: float(on_demand_limit), True: float(spot_limit)}
        self.usage = {False: float(on_demand_usage), True: float(spot_usage)}
        self.region = region
        self.store = store
        self.requests: list[QuotaRequest] = []
        self._lock = threading.Lock()

    def fargate_vcpu_limit(self, spot: bool) -> float:
        """The configured limit."""
        return self.limits[bool(spot)]

    def current_vcpu_usage(self, spot: bool) -> float:
        """The configured usage."""
        return self.usage[bool(spot)]

    def request_increase(self, spot: bool, desired: float) -> QuotaRequest:
        """Open a request (or return the open one covering ``desired``); refuses lowering."""
        with self._lock:
            if desired <= self.limits[bool(spot)]:
                raise ValueError(
                    f"desired {format_number(desired)} vCPU is not above the current quota "
                    f"{format_number(self.limits[bool(spot)])}"
                )
            existing = self._open(spot)
            if existing is not None and existing.desired >= desired:
                return existing
            request = QuotaRequest(
                id=f"fake-{len(self.requests) + 1}",
                spot=bool(spot),
                desired=float(desired),
                status="PENDING",
                region=self.region,
                created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            )
            self.requests.append(request)
        if self.store is not None:
            self.store.put(request)
        return request

    def _open(self, spot: bool) -> Optional[QuotaRequest]:
        for request in reversed(self.requests):
            if request.spot == bool(spot) and request.is_open:
                return request
        return None

    def pending_request(self, spot: bool) -> Optional[QuotaRequest]:
        """The open request, if any."""
        with self._lock:
            return self._open(spot)

    def resolve(self, spot: bool, approve: bool = True) -> QuotaRequest:
        """Close the open request: APPROVED raises the limit to its value; else DENIED."""
        with self._lock:
            request = self._open(spot)
            if request is None:
                raise LookupError(f"no open {_kind(spot)} quota request")
            request.status = "APPROVED" if approve else "DENIED"
            if approve:
                self.limits[bool(spot)] = request.desired
        if self.store is not None:
            self.store.put(request)
        return request


# --- planning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WavePlan:
    """How many workers the quota lets start now, out of those asked for."""

    requested: int
    workers: int
    cpu_per_worker: float
    limit: float
    in_use: float
    spot: bool = False

    @property
    def fits(self) -> bool:
        """Whether every requested worker can run at once."""
        return self.workers >= self.requested

    @property
    def needed_vcpu(self) -> float:
        """The quota that would run every worker at once next to what is already running."""
        return self.in_use + self.requested * self.cpu_per_worker

    @property
    def message(self) -> str:
        """A sentence with the numbers, for the user."""
        each = f"{format_number(self.cpu_per_worker)} vCPU each"
        numbers = f"limit {format_number(self.limit)} vCPU, {format_number(self.in_use)} in use"
        quota = "spot quota" if self.spot else "quota"
        if self.fits:
            return f"{quota} allows all {self.requested} workers ({each}; {numbers})"
        head = f"{quota} allows {self.workers} of {self.requested} workers ({each}; {numbers})"
        if self.workers == 0:
            return (
                f"{head}: no worker can start until running Fargate tasks stop or the quota is "
                f"raised (to run all at once: {format_number(suggest_quota(self.needed_vcpu))} vCPU)"
            )
        return f"{head}: the work runs in waves through {self.workers} workers"

    def __str__(self) -> str:
        return self.message


def plan_waves(
    requested_workers: int, cpu_per_worker: float, limit: float, in_use: float = 0.0, spot: bool = False
) -> WavePlan:
    """How many of ``requested_workers`` (``cpu_per_worker`` vCPU each) fit under a quota of
    ``limit`` vCPU with ``in_use`` already running; ``.message`` says it in a sentence."""
    if isinstance(requested_workers, bool) or not isinstance(requested_workers, int) or requested_workers < 0:
        raise ValueError(f"requested_workers must be a whole number >= 0, got {requested_workers!r}")
    if cpu_per_worker <= 0:
        raise ValueError(f"cpu_per_worker must be greater than zero, got {cpu_per_worker!r}")
    free = max(0.0, float(limit) - float(in_use))
    fit = int(math.floor(free / cpu_per_worker + 1e-9))
    return WavePlan(
        requested=requested_workers,
        workers=min(requested_workers, fit),
        cpu_per_worker=float(cpu_per_worker),
        limit=float(limit),
        in_use=float(in_use),
        spot=bool(spot),
    )


def _steps():
    yield from QUOTA_STEPS
    scale = 1000
    while True:
        scale *= 10
        for m in (0.5, 1, 2):
            yield int(m * scale)


def suggest_quota(needed_vcpu: float) -> int:
    """A round quota value to ask for: the first of 32, 64, 128, 256, 512, 1000, 2000, 5000,
    10000, 20000, 50000, ... that is at least ``needed_vcpu``."""
    if needed_vcpu < 0 or math.isnan(needed_vcpu):
        raise ValueError(f"needed_vcpu must be >= 0, got {needed_vcpu!r}")
    for step in _steps():
        if step >= needed_vcpu - 1e-9:
            return step
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class QuotaStatus:
    """What ``starburst quota`` shows for one capacity."""

    spot: bool
    limit: float
    in_use: float
    request: Optional[QuotaRequest]

    def text(self) -> str:
        """``"on-demand: 48 vCPU quota, 12 in use; request for 256 on-demand vCPU: PENDING"``."""
        line = f"{_kind(self.spot)}: {format_number(self.limit)} vCPU quota, {format_number(self.in_use)} in use"
        if self.request is not None:
            line += f"; {self.request.text()}"
        return line


def quota_status(source: QuotaSource, spot: bool) -> QuotaStatus:
    """Limit, usage and open request of one capacity, from ``source``."""
    return QuotaStatus(
        spot=bool(spot),
        limit=source.fargate_vcpu_limit(spot),
        in_use=source.current_vcpu_usage(spot),
        request=source.pending_request(spot),
    )
