"""What a Fargate cluster costs: a built-in price table, estimates, a running meter, the budget.

Fargate bills each task for its requested vCPU and memory (GB = GiB), from the start of its image
pull until it stops, per second, with a one-minute minimum per task. Prices depend on the region,
the architecture (x86_64 or arm64) and the capacity (on-demand or spot).

What the meter counts, line by line (``CostReport.items``): Fargate vCPU and memory; one public
IPv4 address per task; S3 requests of the cluster's object store (PUT/COPY/POST/LIST class and
GET class, counted by every process that uses it: driver, head, executors; deletes are free);
S3 storage of the cluster's prefix (GB-hours: every byte put, from when it is reported until the
cluster stops; deletions during the run are not subtracted, so this is an upper bound); data
transfer out of AWS (bytes the head and drivers downloaded from S3, and bytes the head received
from its nodes); CodeBuild minutes of an image build started for this cluster. Ephemeral storage
is zero by construction: starburst never asks for more than the 20 GB every Fargate task includes.

The built-in table (``PRICE_TABLE``) holds Linux rates in USD; where they came from is in
``PRICES_SOURCE``. Fargate rates come from the AWS Price List API when it answers
(``PricingApiPriceSource``, cached under STARBURST_HOME for a week; ``price_source()`` picks it);
other rates (``USAGE_RATES``) from the built-in table. A region neither knows is an error.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Union

from starburst.aws.sizes import format_number, normalize_arch, parse_memory

#: When the built-in table was taken, and from where.
PRICES_AS_OF = "2026-11-30"
PRICES_SOURCE = (
    "Linux/x86 on-demand and Fargate Spot rates per region as published on "
    "https://aws.amazon.com/fargate/pricing/ (read through a community transcription of that "
    "page, github.com/theuves/fgcalc src/utils/data.js; the x86 on-demand rates for us-east-1 "
    "and eu-west-1 agree with several independent copies of the page dated 2024-2026); "
    "Linux/ARM rates are 20% below x86, which is how AWS prices Graviton on Fargate and reproduces "
    "the published us-east-1 ARM rates ($0.03238/vCPU-hour, $0.00356/GB-hour) exactly. Spot rates "
    "change over time: treat them as approximate; PricingApiPriceSource reads current ones."
)

#: USD per public IPv4 address-hour (the same in every commercial region since 2024-02-01). Every
#: task starburst launches has one (the head dials it), for as long as the task runs.
PUBLIC_IPV4_HOUR = 0.005

#: S3 Standard and data transfer out, by region: (storage USD per GB-month, PUT/COPY/POST/LIST
#: per 1,000 requests, GET and others per 1,000, data transfer out to the internet per GB (first
#: 10 TB/month tier; the account's 100 GB/month free allowance is not subtracted)). As published on
#: https://aws.amazon.com/s3/pricing/ and https://aws.amazon.com/ec2/pricing/on-demand/ (data
#: transfer), first tiers, transcribed without re-reading the pages (no network where this was
#: written): us-east-1's are the long-standing published rates, the others approximate; verify.
_USAGE_RATES: dict[str, tuple[float, float, float, float]] = {
    "us-east-1": (0.023, 0.005, 0.0004, 0.09),
    "us-east-2": (0.023, 0.005, 0.0004, 0.09),
    "us-west-1": (0.026, 0.0055, 0.00044, 0.09),
    "us-west-2": (0.023, 0.005, 0.0004, 0.09),
    "ca-central-1": (0.025, 0.0055, 0.00044, 0.09),
    "sa-east-1": (0.0405, 0.007, 0.00056, 0.15),
    "eu-west-1": (0.023, 0.005, 0.0004, 0.09),
    "eu-west-2": (0.024, 0.0053, 0.00042, 0.09),
    "eu-west-3": (0.024, 0.0053, 0.00042, 0.09),
    "eu-central-1": (0.0245, 0.0054, 0.00043, 0.09),
    "eu-north-1": (0.023, 0.005, 0.0004, 0.09),
    "eu-south-1": (0.024, 0.0053, 0.00042, 0.09),
    "ap-south-1": (0.025, 0.005, 0.0004, 0.1093),
    "ap-southeast-1": (0.025, 0.005, 0.0004, 0.12),
    "ap-southeast-2": (0.025, 0.0055, 0.00044, 0.114),
    "ap-northeast-1": (0.025, 0.0047, 0.00037, 0.114),
}
#: CodeBuild USD per build minute (billed per started minute) of the compute types starburst uses
#: (``codebuild.CODEBUILD_ENVIRONMENTS``), us-east-1 rates of https://aws.amazon.com/codebuild/pricing/
#: (transcribed, not re-read: verify), used in every region.
CODEBUILD_MINUTE = {"x86_64": 0.01, "arm64": 0.015}  # general1.medium, arm1.large
#: Hours in a month as S3 counts GB-months (GB-hours / 730).
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class UsageRates:
    """USD rates of the items besides Fargate tasks, for one region."""

    s3_gb_month: float
    s3_put_per_1000: float
    s3_get_per_1000: float
    transfer_out_gb: float
    codebuild_minute: dict[str, float]
    source: str = f"built-in table of {PRICES_AS_OF}"


#: region -> UsageRates.
USAGE_RATES: dict[str, UsageRates] = {
    region: UsageRates(*rates, codebuild_minute=dict(CODEBUILD_MINUTE)) for region, rates in _USAGE_RATES.items()
}


class UnknownRegionError(ValueError):
    """No price for a region: neither the built-in table nor the Pricing API has one."""

    def __init__(self, region: str, why: str = ""):
        self.region = region
        super().__init__(f"no built-in Fargate prices for region {region!r}{why}; known: "
                         f"{', '.join(sorted(PRICE_TABLE))}")


def usage_rates(region: str) -> UsageRates:
    """S3, data transfer and CodeBuild rates of ``region`` (unknown regions: those of the most
    expensive known region, so the budget errs on the safe side; the Fargate rates already refused
    a region nobody prices)."""
    if region in USAGE_RATES:
        return USAGE_RATES[region]
    worst = max(USAGE_RATES.values(), key=lambda r: (r.transfer_out_gb, r.s3_put_per_1000))
    return dataclasses.replace(worst, source=f"highest of the built-in table of {PRICES_AS_OF} ({region} not in it)")


#: Seconds of the minimum charge per task.
MINIMUM_BILLED_SECONDS = 60

#: Graviton (arm64) rates relative to x86_64 on Fargate.
_ARM_FACTOR = 0.8

# region: (x86 on-demand vCPU-hour, GB-hour, x86 spot vCPU-hour, GB-hour)
_X86_RATES: dict[str, tuple[float, float, float, float]] = {
    "us-east-1": (0.04048, 0.004445, 0.01264355, 0.00138835),
    "us-east-2": (0.04048, 0.004445, 0.01276353, 0.00140153),
    "us-west-1": (0.04656, 0.00511, 0.013968, 0.001533),
    "us-west-2": (0.04048, 0.004445, 0.01269464, 0.00139396),
    "ca-central-1": (0.04456, 0.004865, 0.013368, 0.0014595),
    "sa-east-1": (0.0696, 0.0076, 0.0212609, 0.00232159),
    "eu-west-1": (0.04048, 0.004445, 0.01257825, 0.00138118),
    "eu-west-2": (0.04656, 0.00511, 0.013968, 0.001533),
    "eu-west-3": (0.0486, 0.0053, 0.01458, 0.00159),
    "eu-central-1": (0.04656, 0.00511, 0.0140458, 0.00154154),
    "eu-north-1": (0.0445, 0.0049, 0.01335, 0.00147),
    "eu-south-1": (0.0486, 0.0053, 0.01458, 0.00159),
    "ap-south-1": (0.04256, 0.004655, 0.0133282, 0.00145777),
    "ap-southeast-1": (0.05056, 0.00553, 0.015168, 0.001659),
    "ap-southeast-2": (0.04856, 0.00532, 0.014568, 0.001596),
    "ap-northeast-1": (0.05056, 0.00553, 0.01981009, 0.00216673),
}


@dataclass(frozen=True)
class Rates:
    """USD per vCPU-hour and per GB-hour for one region, architecture and capacity, and per hour of
    the task's public IPv4 address."""

    vcpu_hour: float
    gb_hour: float
    source: str = f"built-in table of {PRICES_AS_OF}"
    ipv4_hour: float = PUBLIC_IPV4_HOUR

    def compute_per_hour(self, vcpu: float, memory_gb: float) -> float:
        """USD per hour of Fargate vCPU and memory for one task of this size."""
        return vcpu * self.vcpu_hour + memory_gb * self.gb_hour

    def per_hour(self, vcpu: float, memory_gb: float) -> float:
        """USD per hour for one task of this size: vCPU, memory and its public IPv4 address."""
        return self.compute_per_hour(vcpu, memory_gb) + self.ipv4_hour

    def per_second(self, vcpu: float, memory_gb: float) -> float:
        """USD per second for one task of this size."""
        return self.per_hour(vcpu, memory_gb) / 3600.0


def _build_table() -> dict[str, dict[tuple[str, bool], Rates]]:
    table: dict[str, dict[tuple[str, bool], Rates]] = {}
    for region, (od_cpu, od_gb, spot_cpu, spot_gb) in _X86_RATES.items():
        table[region] = {
            ("x86_64", False): Rates(od_cpu, od_gb),
            ("x86_64", True): Rates(spot_cpu, spot_gb),
            ("arm64", False): Rates(round(od_cpu * _ARM_FACTOR, 5), round(od_gb * _ARM_FACTOR, 5)),
            ("arm64", True): Rates(round(spot_cpu * _ARM_FACTOR, 8), round(spot_gb * _ARM_FACTOR, 8)),
        }
    return table


#: region -> (arch, spot) -> Rates.
PRICE_TABLE: dict[str, dict[tuple[str, bool], Rates]] = _build_table()


class PriceSource(Protocol):
    """Where rates come from: the built-in table by default, or the AWS Pricing API."""

    def rates(self, region: str, arch: str = "x86_64", spot: bool = False) -> Rates:
        """Rates for Linux tasks of ``arch`` on on-demand (``spot=False``) or spot capacity."""
        ...


class BuiltinPriceSource:
    """The built-in table. A region it doesn't know is an ``UnknownRegionError`` that lists the
    known ones."""

    def rates(self, region: str, arch: str = "x86_64", spot: bool = False) -> Rates:
        """Rates for ``region``/``arch``/capacity from ``PRICE_TABLE``."""
        key = (normalize_arch(arch), bool(spot))
        if region in PRICE_TABLE:
            return PRICE_TABLE[region][key]
        raise UnknownRegionError(region)


_DEFAULT_SOURCE = BuiltinPriceSource()

_USAGE_TYPE = re.compile(r"^(?:[A-Z0-9]+-)?(SpotUsage-)?Fargate-(ARM-)?(vCPU-Hours:perCPU|GB-Hours)$")


class PricingApiPriceSource:
    """Rates read from the AWS Price List Query API (the ``pricing`` client, service ``AmazonECS``).

    One query per region, kept in memory and, with ``cache_dir``, in ``<cache_dir>/<region>.json``
    with the date it was read (reused for ``CACHE_DAYS``). Entries the API doesn't return (or any
    API failure: no permission, no network; tried once per source) fall back to ``fallback`` (the
    built-in table), and ``Rates.source`` says which was used; ``last_error`` keeps the failure.
    """

    #: The Pricing API answers in a few regions only; us-east-1 is one.
    API_REGION = "us-east-1"
    #: Days an answer saved in ``cache_dir`` is reused.
    CACHE_DAYS = 7

    def __init__(self, client: Any = None, session: Any = None, fallback: PriceSource | None = None,
                 cache_dir: Optional[os.PathLike | str] = None, today: Callable[[], _dt.date] = _dt.date.today):
        self._client = client
        self._session = session
        self.fallback: PriceSource = fallback or _DEFAULT_SOURCE
        self.cache_dir = cache_dir
        self.today = today
        self._cache: dict[str, dict[tuple[str, bool], Rates]] = {}
        self._lock = threading.Lock()
        self.last_error: Optional[Exception] = None

    @property
    def client(self) -> Any:
        """The boto3 ``pricing`` client (created on first use; one attempt, short timeouts: the
        built-in table is the answer when the API doesn't answer at once)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = self._session or boto3.session.Session()
            config = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5, read_timeout=15)
            self._client = session.client("pricing", region_name=self.API_REGION, config=config)
        return self._client

    def _cache_file(self, region: str) -> Optional[str]:
        return None if self.cache_dir is None else os.path.join(self.cache_dir, f"{region}.json")

    def _load(self, region: str) -> Optional[dict[tuple[str, bool], Rates]]:
        path = self._cache_file(region)
        if path is None:
            return None
        try:
            with open(path) as f:
                data = json.load(f)
            fetched = _dt.date.fromisoformat(data["fetched"])
            if (self.today() - fetched).days >= self.CACHE_DAYS:
                return None
            return {(e["arch"], bool(e["spot"])): Rates(float(e["vcpu_hour"]), float(e["gb_hour"]), e["source"])
                    for e in data["rates"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self, region: str, table: dict[tuple[str, bool], Rates]) -> None:
        path = self._cache_file(region)
        if path is None or not table:
            return
        from .._files import write_atomic

        data = {"fetched": self.today().isoformat(), "region": region,
                "rates": [{"arch": a, "spot": s, "vcpu_hour": r.vcpu_hour, "gb_hour": r.gb_hour, "source": r.source}
                          for (a, s), r in sorted(table.items())]}
        try:
            os.makedirs(self.cache_dir or ".", mode=0o700, exist_ok=True)
            write_atomic(path, [json.dumps(data).encode()])
        except OSError:  # a cache that can't be written only costs a query next time
            pass

    def fetch(self, region: str) -> dict[tuple[str, bool], Rates]:
        """Query the API for ``region``'s Fargate Linux rates: ``{(arch, spot): Rates}``."""
        found: dict[tuple[str, bool], dict[str, float]] = {}
        published = ""
        token = None
        while True:
            kwargs: dict[str, Any] = {
                "ServiceCode": "AmazonECS",
                "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}],
                "FormatVersion": "aws_v1",
                "MaxResults": 100,
            }
            if token:
                kwargs["NextToken"] = token
            page = self.client.get_products(**kwargs)
            for item in page.get("PriceList", []):
                product = json.loads(item) if isinstance(item, str) else item
                parsed = _parse_product(product)
                if parsed is None:
                    continue
                (arch, spot, dimension), price = parsed
                found.setdefault((arch, spot), {})[dimension] = price
                published = published or product.get("publicationDate", "")
            token = page.get("NextToken")
            if not token:
                break
        label = "AWS Pricing API" + (f" ({published[:10]}, read {self.today().isoformat()})" if published
                                     else f" (read {self.today().isoformat()})")
        return {
            key: Rates(dims["vcpu"], dims["gb"], label)
            for key, dims in found.items()
            if "vcpu" in dims and "gb" in dims
        }

    def rates(self, region: str, arch: str = "x86_64", spot: bool = False) -> Rates:
        """Rates from the API for ``region`` (cached), else from the fallback source."""
        key = (normalize_arch(arch), bool(spot))
        with self._lock:
            if region not in self._cache:
                loaded = self._load(region)
                if loaded is not None:
                    self._cache[region] = loaded
                elif self.last_error is not None:  # the API failed once: don't wait on it again
                    return self._fallback(region, key, f"Pricing API failed: {_first_line(self.last_error)}")
                else:
                    try:
                        self._cache[region] = self.fetch(region)
                    except Exception as exc:  # noqa: BLE001 - no permission, no network, throttled: the table
                        self.last_error = exc
                        return self._fallback(region, key, f"Pricing API failed: {_first_line(exc)}")
                    self._save(region, self._cache[region])
            table = self._cache[region]
        if key in table:
            return table[key]
        return self._fallback(region, key, "not in the Pricing API's answer")

    def _fallback(self, region: str, key: tuple[str, bool], why: str) -> Rates:
        try:
            rates = self.fallback.rates(region, *key)
        except UnknownRegionError as exc:
            raise UnknownRegionError(region, f" (and the AWS Pricing API didn't price it: {why})") from exc
        return Rates(rates.vcpu_hour, rates.gb_hour, f"{rates.source} ({why})")


def _first_line(exc: BaseException) -> str:
    """An error in a few words (an endpoint may answer with a page of HTML)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."


def price_source(session: Any = None) -> PriceSource:
    """Where a cluster's prices come from: the AWS Price List API (cached under
    ``STARBURST_HOME/prices``) when there are AWS credentials to ask with, the built-in table
    otherwise (or with ``STARBURST_PRICES=builtin``)."""
    if os.environ.get("STARBURST_PRICES", "").lower() == "builtin":
        return _DEFAULT_SOURCE
    try:
        import boto3

        session = session or boto3.session.Session()
        if session.get_credentials() is None:
            return _DEFAULT_SOURCE
    except Exception:  # noqa: BLE001 - no boto3 configuration at all: the table
        return _DEFAULT_SOURCE
    from .. import config

    return PricingApiPriceSource(session=session, cache_dir=config.home() / "prices")


def _parse_product(product: dict) -> Optional[tuple[tuple[str, bool, str], float]]:
    """``((arch, spot, "vcpu"|"gb"), usd)`` for a Fargate Linux rate in a Price List product."""
    attributes = product.get("product", {}).get("attributes", {})
    match = _USAGE_TYPE.match(attributes.get("usagetype", ""))
    if not match:
        return None
    spot, arm, unit = match.groups()
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is None:
                continue
            key = ("arm64" if arm else "x86_64", bool(spot), "vcpu" if unit.startswith("vCPU") else "gb")
            return key, float(usd)
    return None


# --- estimates ---------------------------------------------------------------------------------


def _memory_gb(memory_gb: Union[float, int, str]) -> float:
    if isinstance(memory_gb, str):
        return parse_memory(memory_gb) / 1024.0
    if isinstance(memory_gb, bool) or memory_gb <= 0:
        raise ValueError(f"memory_gb must be a positive number, got {memory_gb!r}")
    return float(memory_gb)


def billed_seconds(seconds: float) -> int:
    """Seconds Fargate bills for a task that ran ``seconds``: rounded up, at least one minute."""
    return max(MINIMUM_BILLED_SECONDS, math.ceil(max(0.0, seconds) - 1e-9))


def task_cost(seconds: float, cpu: float, memory_gb: Union[float, str], rates: Rates) -> float:
    """USD for one task of ``cpu`` vCPU and ``memory_gb`` GB that ran ``seconds``."""
    return rates.per_second(cpu, _memory_gb(memory_gb)) * billed_seconds(seconds)


def estimate_hourly(
    workers: int,
    cpu: float,
    memory_gb: Union[float, str],
    arch: str = "x86_64",
    spot: bool = False,
    region: str = "us-east-1",
    source: PriceSource | None = None,
) -> float:
    """USD per hour for ``workers`` Fargate tasks of ``cpu`` vCPU and ``memory_gb`` GB each."""
    _check_workers(workers)
    rates = (source or _DEFAULT_SOURCE).rates(region, arch, spot)
    return workers * rates.per_hour(cpu, _memory_gb(memory_gb))


def _check_workers(workers: object) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")


def format_cost(usd: float) -> str:
    """``"$2.71"``; amounts under ten cents keep four decimals (``"$0.0042"``)."""
    if abs(usd) >= 0.1 or usd == 0:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min 30 s"``, ``"2 h 05 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def describe_estimate(
    workers: int,
    cpu: float,
    memory_gb: Union[float, str],
    arch: str = "x86_64",
    spot: bool = False,
    region: str = "us-east-1",
    max_cost: Optional[float] = None,
    source: PriceSource | None = None,
) -> str:
    """One line shown before launch: what the cluster costs per hour (and how long ``max_cost``
    lasts at that rate)."""
    _check_workers(workers)
    gb = _memory_gb(memory_gb)
    rates = (source or _DEFAULT_SOURCE).rates(region, arch, spot)  # once: a Price List source may ask AWS
    hourly = workers * rates.per_hour(cpu, gb)
    capacity = "Fargate Spot" if spot else "Fargate"
    noun = "worker" if workers == 1 else "workers"
    line = (
        f"{workers} {noun} x {format_number(cpu)} vCPU/{format_number(gb)} GB on {capacity} "
        f"({normalize_arch(arch)}, {region}): about {format_cost(hourly)}/hour"
    )
    if workers:
        line += (f" (vCPU and memory {format_cost(workers * rates.compute_per_hour(cpu, gb))}, "
                 f"public IPv4 {format_cost(workers * rates.ipv4_hour)}; prices: {rates.source}), "
                 "plus S3 requests, storage and data transfer out as metered")
    if max_cost is not None and hourly > 0:
        line += f"; max_cost {format_cost(max_cost)} lasts about {format_duration(max_cost / hourly * 3600)}"
    return line


def would_exceed(max_cost: Optional[float], projected: float) -> bool:
    """True when ``projected`` USD is past the budget ``max_cost`` (None: no budget)."""
    if max_cost is None:
        return False
    return projected > max_cost + 1e-9


# --- the meter ---------------------------------------------------------------------------------


@dataclass
class _Task:
    task_id: str
    vcpu: float
    memory_gb: float
    rates: Rates
    started: float
    stopped: Optional[float] = None

    def cost(self, now: float, compute: bool = True, ipv4: bool = True) -> float:
        end = self.stopped if self.stopped is not None else now
        hourly = ((self.rates.compute_per_hour(self.vcpu, self.memory_gb) if compute else 0.0)
                  + (self.rates.ipv4_hour if ipv4 else 0.0))
        return hourly / 3600.0 * billed_seconds(end - self.started)


@dataclass(frozen=True)
class CostReport:
    """The bill of a cluster: shown at shutdown, and by ``starburst cost``."""

    runtime_seconds: float
    cost: float
    nodes: int
    node_seconds: float
    tasks_run: int
    region: str
    running: int = 0
    max_cost: Optional[float] = None
    sources: tuple[str, ...] = field(default_factory=tuple)
    tasks_failed: int = 0  # of tasks_run: ended with an error
    tasks_cancelled: int = 0  # of tasks_run: cancelled
    #: ``cost`` line by line: ``(("Fargate vCPU and memory", usd), ("public IPv4", usd), ("S3
    #: requests", usd), ("S3 storage", usd), ("data transfer out", usd), ("CodeBuild", usd))``.
    items: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    #: What was metered, for checking the bill by hand: ``billed_task_seconds`` (one per task),
    #: ``s3_put_requests``, ``s3_get_requests``, ``s3_delete_requests``, ``s3_byte_hours``,
    #: ``transfer_out_bytes``, ``codebuild_minutes``.
    usage: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """A line a person reads at a glance."""
        parts = [
            f"ran {format_duration(self.runtime_seconds)}",
            (f"{self.nodes} Fargate {'task' if self.nodes == 1 else 'tasks'} "
            f"({self.node_seconds / 3600:.2f} task-hours)"),
            f"{self.tasks_run:,} {'task' if self.tasks_run == 1 else 'tasks'} run",
        ]
        if self.tasks_failed or self.tasks_cancelled:
            ok = self.tasks_run - self.tasks_failed - self.tasks_cancelled
            parts[-1] += f" ({ok:,} finished, {self.tasks_failed:,} failed, {self.tasks_cancelled:,} cancelled)"
        cost = f"cost {format_cost(self.cost)}"
        if self.items:  # the Fargate lines always, the others when they cost something
            shown = [f"{name} {format_cost(usd)}" for i, (name, usd) in enumerate(self.items) if usd or i < 2]
            cost += " (" + ", ".join(shown) + ")"
        if self.max_cost is not None:
            cost += f" of max_cost {format_cost(self.max_cost)}"
        parts.append(cost)
        if self.running:
            parts.append(f"{self.running} still running")
        return f"{self.region}: " + "; ".join(parts)


class CostMeter:
    """Records when each Fargate task started and stopped, the S3 requests, bytes and image builds
    the cluster caused, and what it all costs so far.

    A running task is charged at least its minute from the moment it starts (Fargate will bill
    it anyway), so ``cost_so_far`` never under-states the bill. ``clock`` is injectable.
    """

    def __init__(
        self,
        region: str = "us-east-1",
        source: PriceSource | None = None,
        clock: Callable[[], float] = time.time,
        max_cost: Optional[float] = None,
    ):
        self.region = region
        self.source: PriceSource = source or _DEFAULT_SOURCE
        self.clock = clock
        self.max_cost = max_cost
        self.started_at = clock()
        self.tasks_run = 0
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self.usage_rates = usage_rates(region)
        self.s3_put_requests = 0
        self.s3_get_requests = 0
        self.s3_delete_requests = 0
        self.transfer_out_bytes = 0
        self.codebuild_minutes = 0
        self.codebuild_usd = 0.0
        self._stored_bytes = 0  # bytes put so far (deletions not subtracted: an upper bound)
        self._byte_seconds = 0.0  # integral of _stored_bytes up to _stored_at
        self._stored_at = self.started_at

    def record_usage(self, put_requests: int, get_requests: int, delete_requests: int, bytes_uploaded: int,
                     transfer_out_bytes: int, at: Optional[float] = None) -> None:
        """The cluster's S3 requests, bytes put, and bytes that left AWS, as totals since it
        started (each call replaces the last; totals only grow)."""
        with self._lock:
            now = self.clock() if at is None else at
            self._byte_seconds += self._stored_bytes * max(0.0, now - self._stored_at)
            self._stored_at = max(self._stored_at, now)
            self.s3_put_requests = max(self.s3_put_requests, put_requests)
            self.s3_get_requests = max(self.s3_get_requests, get_requests)
            self.s3_delete_requests = max(self.s3_delete_requests, delete_requests)
            self._stored_bytes = max(self._stored_bytes, bytes_uploaded)
            self.transfer_out_bytes = max(self.transfer_out_bytes, transfer_out_bytes)

    def record_build(self, seconds: float, arch: str = "x86_64") -> float:
        """An image build of ``seconds`` on CodeBuild for this cluster (billed per started
        minute); returns its cost."""
        minutes = max(1, math.ceil(max(0.0, seconds) / 60 - 1e-9))
        usd = minutes * self.usage_rates.codebuild_minute[normalize_arch(arch)]
        with self._lock:
            self.codebuild_minutes += minutes
            self.codebuild_usd += usd
        return usd

    def _byte_hours(self, now: float) -> float:
        return (self._byte_seconds + self._stored_bytes * max(0.0, now - self._stored_at)) / 3600.0

    def _usage_items(self, now: float) -> list[tuple[str, float]]:
        r = self.usage_rates
        return [
            ("S3 requests", self.s3_put_requests / 1000 * r.s3_put_per_1000
             + self.s3_get_requests / 1000 * r.s3_get_per_1000),
            ("S3 storage", self._byte_hours(now) / 1e9 * r.s3_gb_month / HOURS_PER_MONTH),
            ("data transfer out", self.transfer_out_bytes / 1e9 * r.transfer_out_gb),
            ("CodeBuild", self.codebuild_usd),
        ]

    def task_started(
        self,
        task_id: str,
        cpu: float,
        memory_gb: Union[float, str],
        arch: str = "x86_64",
        spot: bool = False,
        at: Optional[float] = None,
    ) -> None:
        """Start the clock for Fargate task ``task_id`` (``cpu`` vCPU, ``memory_gb`` GB)."""
        rates = self.source.rates(self.region, arch, spot)
        with self._lock:
            if task_id in self._tasks:
                raise ValueError(f"task {task_id} was already started")
            start = self.clock() if at is None else at
            self._tasks[task_id] = _Task(task_id, float(cpu), _memory_gb(memory_gb), rates, start)

    def task_stopped(self, task_id: str, at: Optional[float] = None) -> float:
        """Stop the clock for ``task_id``; returns that task's cost. A second stop changes nothing."""
        with self._lock:
            task = self._tasks[task_id]
            if task.stopped is None:
                end = self.clock() if at is None else at
                task.stopped = max(end, task.started)
            return task.cost(task.stopped)

    def record_tasks_run(self, count: int = 1) -> None:
        """Count ``count`` more user tasks run on the cluster (for the report)."""
        with self._lock:
            self.tasks_run += count

    def running(self) -> list[str]:
        """Ids of the tasks started and not stopped."""
        with self._lock:
            return [t.task_id for t in self._tasks.values() if t.stopped is None]

    def cost_so_far(self, now: Optional[float] = None) -> float:
        """USD billed or accruing so far (running tasks are charged at least their minute)."""
        now = self.clock() if now is None else now
        with self._lock:
            return sum(t.cost(now) for t in self._tasks.values()) + sum(usd for _, usd in self._usage_items(now))

    def burn_rate(self) -> float:
        """USD per hour that the running tasks cost now."""
        with self._lock:
            return sum(
                t.rates.per_hour(t.vcpu, t.memory_gb) for t in self._tasks.values() if t.stopped is None
            )

    def launch_cost(
        self, count: int, cpu: float, memory_gb: Union[float, str], arch: str = "x86_64", spot: bool = False
    ) -> float:
        """USD that launching ``count`` more tasks commits to at once (their minimum minute)."""
        rates = self.source.rates(self.region, arch, spot)
        return count * task_cost(0, cpu, memory_gb, rates)

    def can_launch(
        self,
        count: int,
        cpu: float,
        memory_gb: Union[float, str],
        arch: str = "x86_64",
        spot: bool = False,
        now: Optional[float] = None,
    ) -> bool:
        """Whether ``count`` more tasks fit under ``max_cost`` (always, without a budget)."""
        if self.max_cost is None:
            return True
        projected = self.cost_so_far(now) + self.launch_cost(count, cpu, memory_gb, arch, spot)
        return not would_exceed(self.max_cost, projected)

    def seconds_until(self, limit: float, now: Optional[float] = None) -> Optional[float]:
        """Seconds until the running tasks bring the cost to ``limit`` (0 if already there; None if
        nothing is running)."""
        now = self.clock() if now is None else now
        spent = self.cost_so_far(now)
        if spent >= limit:
            return 0.0
        rate = self.burn_rate() / 3600.0
        if rate <= 0:
            return None
        # Tasks still inside their first minute are already charged for it: the cost only grows
        # once they pass it, so this is a lower bound, which is the safe side for a cap.
        return (limit - spent) / rate

    def report(self, now: Optional[float] = None) -> CostReport:
        """Runtime, cost and task counts up to ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        with self._lock:
            tasks = list(self._tasks.values())
            tasks_run = self.tasks_run
            extra = self._usage_items(now)
            usage = {
                "billed_task_seconds": [billed_seconds((t.stopped if t.stopped is not None else now) - t.started)
                                        for t in tasks],
                "s3_put_requests": self.s3_put_requests, "s3_get_requests": self.s3_get_requests,
                "s3_delete_requests": self.s3_delete_requests, "s3_byte_hours": self._byte_hours(now),
                "transfer_out_bytes": self.transfer_out_bytes, "codebuild_minutes": self.codebuild_minutes,
            }
        sources = {t.rates.source for t in tasks} | ({self.usage_rates.source} if any(u for _, u in extra) else set())
        node_seconds = sum(
            max(0.0, (t.stopped if t.stopped is not None else now) - t.started) for t in tasks
        )
        return CostReport(
            runtime_seconds=max(0.0, now - self.started_at),
            cost=sum(t.cost(now) for t in tasks) + sum(usd for _, usd in extra),
            nodes=len(tasks),
            node_seconds=node_seconds,
            tasks_run=tasks_run,
            region=self.region,
            running=sum(1 for t in tasks if t.stopped is None),
            max_cost=self.max_cost,
            sources=tuple(sorted(sources)),
            items=(("Fargate vCPU and memory", sum(t.cost(now, ipv4=False) for t in tasks)),
                   ("public IPv4", sum(t.cost(now, compute=False) for t in tasks)), *extra),
            usage=usage,
        )
