"""What a Fargate cluster costs: a built-in price table, estimates, a running meter, the budget.

Fargate bills each task for its requested vCPU and memory (GB = GiB), from the start of its image
pull until it stops, per second, with a one-minute minimum per task. Prices depend on the region,
the architecture (x86_64 or arm64) and the capacity (on-demand or spot).

The built-in table (``PRICE_TABLE``) holds Linux rates in USD; where they came from is in
``PRICES_SOURCE``. Spot rates move over time; the Pricing API source (``PricingApiPriceSource``)
refreshes them when the account can call it. Nothing here calls AWS unless that source is used.
"""

from __future__ import annotations

import json
import math
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
    """The built-in table. A region it doesn't know gets the highest rates in the table (so a
    budget check errs on the safe side), with a ``source`` that says so."""

    def rates(self, region: str, arch: str = "x86_64", spot: bool = False) -> Rates:
        """Rates for ``region``/``arch``/capacity from ``PRICE_TABLE``."""
        key = (normalize_arch(arch), bool(spot))
        if region in PRICE_TABLE:
            return PRICE_TABLE[region][key]
        worst_region = max(PRICE_TABLE, key=lambda r: PRICE_TABLE[r][key].per_hour(1, 2))
        worst = PRICE_TABLE[worst_region][key]
        return Rates(
            worst.vcpu_hour,
            worst.gb_hour,
            f"no built-in price for {region}; using the highest built-in rate ({worst_region}, "
            f"table of {PRICES_AS_OF})",
        )


_DEFAULT_SOURCE = BuiltinPriceSource()

_USAGE_TYPE = re.compile(r"^(?:[A-Z0-9]+-)?(SpotUsage-)?Fargate-(ARM-)?(vCPU-Hours:perCPU|GB-Hours)$")


class PricingApiPriceSource:
    """Rates read from the AWS Price List Query API (the ``pricing`` client, service ``AmazonECS``).

    One query per region, cached. Entries the API doesn't return (or any API failure: no
    permission, no network) fall back to ``fallback`` (the built-in table), and ``Rates.source``
    says which was used; ``last_error`` keeps the failure.
    """

    #: The Pricing API answers in a few regions only; us-east-1 is one.
    API_REGION = "us-east-1"

    def __init__(self, client: Any = None, session: Any = None, fallback: PriceSource | None = None):
        self._client = client
        self._session = session
        self.fallback: PriceSource = fallback or _DEFAULT_SOURCE
        self._cache: dict[str, dict[tuple[str, bool], Rates]] = {}
        self._lock = threading.Lock()
        self.last_error: Optional[Exception] = None

    @property
    def client(self) -> Any:
        """The boto3 ``pricing`` client (created on first use)."""
        if self._client is None:
            import boto3

            session = self._session or boto3.session.Session()
            self._client = session.client("pricing", region_name=self.API_REGION)
        return self._client

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
        label = "AWS Pricing API" + (f" ({published})" if published else "")
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
                try:
                    self._cache[region] = self.fetch(region)
                except Exception as exc:  # noqa: BLE001 - no permission, no network, throttled: use the table
                    self.last_error = exc
                    return self._fallback(region, key, f"Pricing API failed: {exc}")
            table = self._cache[region]
        if key in table:
            return table[key]
        return self._fallback(region, key, "not in the Pricing API's answer")

    def _fallback(self, region: str, key: tuple[str, bool], why: str) -> Rates:
        rates = self.fallback.rates(region, *key)
        return Rates(rates.vcpu_hour, rates.gb_hour, f"{rates.source} ({why})")


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
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
    rates = (source or _DEFAULT_SOURCE).rates(region, arch, spot)
    return workers * rates.per_hour(cpu, _memory_gb(memory_gb))


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
    gb = _memory_gb(memory_gb)
    hourly = estimate_hourly(workers, cpu, gb, arch, spot, region, source)
    rates = (source or _DEFAULT_SOURCE).rates(region, arch, spot)
    capacity = "Fargate Spot" if spot else "Fargate"
    noun = "worker" if workers == 1 else "workers"
    line = (
        f"{workers} {noun} x {format_number(cpu)} vCPU/{format_number(gb)} GB on {capacity} "
        f"({normalize_arch(arch)}, {region}): about {format_cost(hourly)}/hour"
    )
    if workers:
        line += (f" (vCPU and memory {format_cost(workers * rates.compute_per_hour(cpu, gb))}, "
                 f"public IPv4 {format_cost(workers * rates.ipv4_hour)}; prices: {rates.source})")
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
    #: ``cost`` line by line: ``(("Fargate vCPU and memory", usd), ("public IPv4", usd))``.
    items: tuple[tuple[str, float], ...] = field(default_factory=tuple)

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
        if self.items:
            cost += " (" + ", ".join(f"{name} {format_cost(usd)}" for name, usd in self.items) + ")"
        if self.max_cost is not None:
            cost += f" of max_cost {format_cost(self.max_cost)}"
        parts.append(cost)
        if self.running:
            parts.append(f"{self.running} still running")
        return f"{self.region}: " + "; ".join(parts)


class CostMeter:
    """Records when each Fargate task started and stopped, and what it costs so far.

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
            return sum(t.cost(now) for t in self._tasks.values())

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
        node_seconds = sum(
            max(0.0, (t.stopped if t.stopped is not None else now) - t.started) for t in tasks
        )
        return CostReport(
            runtime_seconds=max(0.0, now - self.started_at),
            cost=sum(t.cost(now) for t in tasks),
            nodes=len(tasks),
            node_seconds=node_seconds,
            tasks_run=tasks_run,
            region=self.region,
            running=sum(1 for t in tasks if t.stopped is None),
            max_cost=self.max_cost,
            sources=tuple(sorted({t.rates.source for t in tasks})),
            items=(("Fargate vCPU and memory", sum(t.cost(now, ipv4=False) for t in tasks)),
                   ("public IPv4", sum(t.cost(now, compute=False) for t in tasks))),
        )
