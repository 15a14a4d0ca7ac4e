"""A Fargate cluster's options, checked on the laptop before anything is launched.

``init(cluster="fargate", ...)`` and ``starburst up --cluster fargate`` both go through
:func:`prepare`: it validates the options (sizes name the nearest valid ones), checks that
``starburst setup`` was run and that credentials work, finds or builds the worker image, prices the
cluster, reads the vCPU quota (offering an increase request when it is short) and returns a
:class:`ClusterOptions` that the head process receives as a JSON file. The head's
``FargateProvider`` then launches exactly what these options say.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .pricing import describe_estimate, price_source
from .sizes import format_size, normalize_arch, validate_size

log = logging.getLogger("starburst.aws")

#: ``init(cluster="fargate")`` with no sizes: 4 workers of 2 vCPU / 4 GB (8 vCPU in all).
DEFAULT_WORKERS = 4
DEFAULT_CPU = 2
DEFAULT_MEMORY = "4GB"
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_LEASE_S = 180.0
DEFAULT_MAX_WAIT_S = 30.0


@dataclass
class ClusterOptions:
    """Everything the head needs to run a Fargate cluster (no secrets: it is written to a file)."""

    cluster_id: str
    region: str
    workers_min: int
    workers_max: int
    cpu: int  # ECS CPU units (1024 per vCPU)
    memory: int  # MiB
    arch: str = "x86_64"
    spot: bool = False
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_cost: Optional[float] = None
    image: str = ""
    lease_s: float = DEFAULT_LEASE_S
    #: How many workers the vCPU quota lets run at once (None: unknown, launch and let AWS say).
    quota_workers: Optional[int] = None
    #: Extra requirements of ``init(runtime_env={"pip": [...]})``: the image is derived with them.
    pip: list[str] = dataclasses.field(default_factory=list)
    #: A hybrid cluster: the head also runs a node on this machine, and Fargate nodes are overflow
    #: launched when ``burst`` says it pays (``starburst.head.burst``).
    local: bool = False
    burst: str = "auto"
    #: Seconds of backlog the laptop may take alone before the cluster bursts (``burst="auto"``).
    max_wait: float = DEFAULT_MAX_WAIT_S
    #: Seconds of CodeBuild that building this cluster's image took (the meter bills them).
    codebuild_seconds: float = 0.0

    @property
    def vcpu(self) -> float:
        return self.cpu / 1024

    @property
    def memory_gb(self) -> float:
        return self.memory / 1024

    def describe_size(self) -> str:
        size = format_size(self.cpu, self.memory)
        return f"{size}, {self.arch}" + (", spot" if self.spot else "")

    def save(self, path: pathlib.Path) -> pathlib.Path:
        from .._files import write_atomic

        write_atomic(path, [json.dumps(dataclasses.asdict(self), indent=2).encode()])
        return path

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "ClusterOptions":
        data = json.loads(pathlib.Path(path).read_text())
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def parse_workers(workers: Any) -> tuple[int, int]:
    """``4`` -> (4, 4); ``(0, 10)`` -> (0, 10). ValueError/TypeError with what to write instead."""
    if isinstance(workers, bool):
        raise TypeError(f"workers must be a number or a (min, max) pair, got {workers!r}")
    if isinstance(workers, int):
        low = high = workers
    elif isinstance(workers, (tuple, list)) and len(workers) == 2 and all(
            isinstance(w, int) and not isinstance(w, bool) for w in workers):
        low, high = workers
    else:
        raise TypeError(f"workers must be a whole number or a (min, max) pair of them, got {workers!r}")
    if low < 0 or high < 1 or low > high:
        raise ValueError(f"workers={workers!r}: need 0 <= min <= max and max >= 1, e.g. workers=4 or "
                         "workers=(0, 10)")
    return low, high


def _positive(name: str, value: Any, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of {'dollars' if name == 'max_cost' else 'seconds'}, "
                         f"got {value!r}")
    return float(value)


def _required(name: str, value: Any) -> float:
    checked = _positive(name, value)
    assert checked is not None
    return checked


def check_options(
    *, workers: Any = DEFAULT_WORKERS, cpu: Any = DEFAULT_CPU, memory: Any = DEFAULT_MEMORY,
    arch: Optional[str] = None, spot: bool = False, idle_timeout: Any = DEFAULT_IDLE_TIMEOUT_S,
    max_cost: Any = None, region: Optional[str] = None, image: Optional[str] = None,
    lease: Any = DEFAULT_LEASE_S, cluster_id: str = "", local: Any = False, burst: Any = None,
    max_wait: Any = None,
) -> ClusterOptions:
    """Validate and normalize the user's options (no AWS calls): the earliest errors.

    ``local=True`` makes a hybrid cluster (this machine's cores first, Fargate nodes as overflow);
    ``burst`` (``"auto"``, ``"always"``, ``"never"``) and ``max_wait`` (seconds) steer it."""
    from ..head.burst import MODES

    if not isinstance(local, bool):
        raise TypeError(f"local must be True or False, got {local!r}")
    if not local and (burst is not None or max_wait is not None):
        raise ValueError("burst= and max_wait= steer a hybrid cluster: add local=True (--local) to run "
                         "tasks on this machine first and burst to Fargate")
    if burst is not None and burst not in MODES:
        raise ValueError(f"burst={burst!r}: use one of {', '.join(map(repr, MODES))}")
    if max_wait is not None and (isinstance(max_wait, bool) or not isinstance(max_wait, (int, float))
                                 or not math.isfinite(max_wait) or max_wait < 0):
        raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
    low, high = parse_workers(workers)
    if local and not isinstance(workers, (tuple, list)):  # hybrid: workers=N is "up to N cloud nodes"
        low = 0
    arch = normalize_arch(arch)
    units, mib = validate_size(cpu, memory, arch)
    if not isinstance(spot, bool):
        raise TypeError(f"spot must be True or False, got {spot!r}")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise ValueError(f"image must name a container image, got {image!r}")
    return ClusterOptions(
        cluster_id=cluster_id, region=region or "", workers_min=low, workers_max=high, cpu=units,
        memory=mib, arch=arch, spot=spot, idle_timeout=_required("idle_timeout", idle_timeout),
        max_cost=_positive("max_cost", max_cost, allow_none=True), image=image or "",
        lease_s=_required("lease", lease), local=local, burst=burst or "auto",
        max_wait=DEFAULT_MAX_WAIT_S if max_wait is None else float(max_wait),
    )


#: Where the laptop learns its public address (the security group admits only that address).
CHECKIP_URL = "https://checkip.amazonaws.com"


def public_ip(timeout: float = 5.0) -> Optional[str]:
    """This machine's public IPv4 address as AWS sees it: ``$STARBURST_HEAD_IP`` if set, else
    asked of checkip.amazonaws.com; None when it can't be found."""
    import ipaddress
    import os
    import urllib.request

    text = os.environ.get("STARBURST_HEAD_IP", "").strip()
    if not text:
        try:
            with urllib.request.urlopen(CHECKIP_URL, timeout=timeout) as resp:
                text = resp.read(64).decode().strip()
        except (OSError, ValueError):
            return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def worker_image(session, settings, arch: str, say: Callable[[str], None], pip: Sequence[str] = (),
                 on_build: Optional[Callable[[float], None]] = None) -> str:
    """The worker image for this environment (``starburst.envsync``), plus ``pip`` requirements
    if any (a derived image with its own hash): found in ECR by its hash, or built and pushed
    first. The time this adds when the image exists is one ECR lookup. ``on_build`` is told the
    seconds CodeBuild ran, when it built the image."""
    from ..envsync import capture, derived_spec
    from .image import BuildError, ensure_image, make_builder

    machine = "aarch64" if arch == "arm64" else "x86_64"
    spec = derived_spec(capture(machine=machine), {"pip": list(pip)} if pip else None)
    builder = make_builder(settings.builder, session, settings)
    try:
        return ensure_image(session, settings, spec, builder=builder, progress=say)
    except BuildError as exc:
        raise RuntimeError(f"the worker image could not be built: {exc}") from exc
    finally:
        seconds = float(vars(builder).get("build_seconds", 0.0))  # CodeBuild's; a local Docker build is free
        if on_build is not None and seconds:
            on_build(seconds)  # billed even when the build failed


def _say(line: str) -> None:
    print(f"starburst: {line}", file=sys.stderr, flush=True)


def announce_attached(address: str, cluster_id: str, say: Callable[[str], None] = _say) -> str:
    """Say, in one line, that init() is using a running Fargate cluster and what it costs now (its
    head's meter); returns the line."""
    from ..driver.process import head_status
    from .pricing import format_cost

    status = head_status(address, timeout=10)  # with the head's token, like any driver's call
    if status is not None:
        c = status.cluster
        cost = f"{format_cost(c.cost_per_hour)}/hour now, {format_cost(c.cost_usd)} so far"
    else:
        cost = "its cost unknown (the head did not answer)"
    line = (f"using the running Fargate cluster {cluster_id} ({cost}); it bills until "
            "'starburst down' stops it")
    say(line)
    return line


def _ask(question: str) -> bool:
    try:
        return input(f"starburst: {question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def prepare(
    options: ClusterOptions,
    *,
    session=None,
    quota_source=None,
    auto_quota_request: Optional[bool] = None,
    interactive: Optional[bool] = None,
    ask: Callable[[str], bool] = _ask,
    say: Callable[[str], None] = _say,
    build_image: Optional[Callable[..., str]] = None,
) -> ClusterOptions:
    """The laptop's part of starting a Fargate cluster, before the head launches anything.

    Checks settings and credentials, finds (or builds) the image, says what the cluster costs per
    hour, and reads the quota: when fewer workers fit than asked for, says so with the numbers
    and offers a quota increase request (a y/n question in a terminal; ``auto_quota_request``
    decides otherwise). Returns the options with ``cluster_id``, ``region``, ``image`` and
    ``quota_workers`` filled in.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from .context import caller_identity
    from .launcher import new_cluster_id
    from .provision import allow_head
    from .quotas import ServiceQuotasSource, plan_waves, suggest_quota
    from .resources import UPDATED
    from .settings import AwsSetupError, Settings

    settings = Settings.load()
    if not Settings.path().exists():
        raise RuntimeError("starburst has no AWS resources in this account yet: run 'starburst setup' "
                           "once (it creates the bucket, roles, ECS cluster and security group)")
    region = options.region or settings.region
    if region != settings.region:
        raise ValueError(f"region={region!r}, but 'starburst setup' prepared {settings.region!r}: run "
                         f"'starburst setup --region {region}' first")
    session = session or boto3.Session(region_name=region)
    try:
        caller_identity(session, region)  # the one message for missing or refused credentials
    except AwsSetupError as exc:
        raise RuntimeError(str(exc)) from exc
    prices = price_source(session)
    prices.rates(region, options.arch, options.spot)  # UnknownRegionError (a ValueError) lists the known ones
    head_ip = public_ip()
    if head_ip is None:
        say("could not find this machine's public address (set STARBURST_HEAD_IP): the nodes admit "
            "only the address 'starburst setup' saw")
    else:
        try:
            admitted = allow_head(session, settings, head_ip)
        except AwsSetupError as exc:
            raise RuntimeError(str(exc)) from exc
        if admitted.status == UPDATED:
            say(f"this machine's address changed: the nodes' security group now admits {head_ip}")
    out = dataclasses.replace(options, region=region, cluster_id=options.cluster_id or new_cluster_id(settings))
    if not out.image:
        if build_image is not None:
            out.image = build_image(session, settings, out.arch, say, out.pip)
        else:
            builds: list[float] = []
            out.image = worker_image(session, settings, out.arch, say, out.pip, on_build=builds.append)
            out.codebuild_seconds = sum(builds)

    estimate = describe_estimate(out.workers_max, out.vcpu, out.memory_gb, out.arch, out.spot, region,
                                 out.max_cost, source=prices)
    say(estimate)

    source = quota_source or ServiceQuotasSource(region=region, session=session)
    try:
        limit = source.fargate_vcpu_limit(out.spot)
        in_use = source.current_vcpu_usage(out.spot)
    except (BotoCoreError, ClientError, AwsSetupError) as exc:
        log.debug("could not read the Fargate vCPU quota (%s); launching without a plan", exc)  # said below
        say(f"could not read the Fargate vCPU quota in {region}; AWS will refuse what doesn't fit")
        return out
    plan = plan_waves(out.workers_max, out.vcpu, limit, in_use, out.spot)
    out.quota_workers = plan.workers
    if plan.fits:
        return out
    say(plan.message)
    pending = source.pending_request(out.spot)
    wanted = suggest_quota(plan.needed_vcpu)
    if pending is not None and pending.desired >= wanted:
        say(f"a quota increase request is already open: {pending.text()} ('starburst quota' shows it)")
    else:
        if interactive is None:
            interactive = sys.stdin.isatty() and sys.stderr.isatty()
        if auto_quota_request is None:
            agree = interactive and ask(f"Request a Fargate {'spot ' if out.spot else ''}vCPU quota of "
                                        f"{wanted} (now {limit:g})? AWS usually answers within hours.")
        else:
            agree = auto_quota_request
        if agree:
            request = source.request_increase(out.spot, wanted)
            say(f"requested: {request.text()}; 'starburst quota' shows its status")
        elif pending is None:
            say(f"to run all workers at once, request {wanted} vCPU: init(..., auto_quota_request=True) "
                "or answer y in a terminal")
    if plan.workers == 0:
        raise RuntimeError(f"no worker can start now: {plan.message}")
    return out
