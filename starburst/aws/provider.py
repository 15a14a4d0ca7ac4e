"""The head's Fargate node provider: launches nodes as Fargate tasks, dials them over mutual TLS,
scales them with the backlog, keeps the cluster inside its budget, and stops every task it
started when the head exits.

Lifecycle of one node (an ECS task):

    launch (RunTask) -> pending: no address yet, or not answering yet
                     -> connected: the head's Work stream is open (tasks flow)
                     -> stopped: StopTask by us (scale-down, shutdown, budget), or it stopped itself
                        (lease expired, crashed, Spot reclaimed); its running tasks were retried

A node whose stream drops goes back to pending: the head re-dials it while ECS says it runs (the
node waits for its head for its lease), and forgets it once ECS says it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import grpc

from .. import config, tls
from .._files import write_atomic
from .._proto import starburst_pb2 as pb
from ..head.burst import Backlog, BurstPolicy, Capacity, Decision, decide, estimate_backlog, learn_start
from ..head.providers import LocalProvider, NodeProvider
from .cluster import ClusterOptions
from .launcher import BudgetError, FargateLauncher, LaunchError, stop_reasons
from .pricing import CostMeter, CostReport, format_cost, format_duration, price_source, would_exceed
from .settings import Settings

if TYPE_CHECKING:
    from ..head.server import Head

log = logging.getLogger("starburst.fargate")

#: How long a cluster's certificates are valid (a cluster running longer can't add nodes).
#: The head's and the nodes' certificates last this long and are renewed at half their life, so a
#: cluster lives as long as its head does; the CA (its key only in the head's memory) outlives them.
CERT_DAYS = 7
CA_DAYS = 3650
#: While the quota holds workers back (waves), it is read again this often: the account's other
#: tasks may have stopped, or an increase been granted.
QUOTA_REREAD_S = 60.0
#: A launched node that has had an address this long without answering is given up on.
CONNECT_GIVE_UP_S = 300.0
#: Nodes in a row that stop before joining after which the cluster gives up (fewer if that's all
#: it may run); after each, no node is launched for RELAUNCH_BACKOFF_S.
MAX_FAILED_STARTS = 3
RELAUNCH_BACKOFF_S = 10.0
#: Stop the cluster this many seconds before the running nodes would take it past max_cost.
BUDGET_MARGIN_S = 5.0
#: A hybrid cluster's first guess of a node's start time (RunTask to joined), until it has timed
#: its own nodes; ``$STARBURST_FARGATE_START_S`` overrides it (the rehearsal's nodes start faster).
DEFAULT_START_S = 45.0


@dataclass
class _NodeTask:
    arn: str
    launched: float
    address: str = ""
    address_since: float = 0.0
    link: Any = None  # the head's NodeLink while connected
    connecting: bool = False
    joined: bool = False
    idle_since: Optional[float] = None
    stop_reason: str = ""
    ecs_status: str = "PROVISIONING"  # ECS's lastStatus when last described


@dataclass
class ShutdownReport:
    """What a Fargate cluster's head leaves behind when it stops: its bill (the meter's
    ``CostReport``) and why it stopped, if not on request."""

    cluster_id: str
    bill: CostReport
    reason: str = ""
    #: A hybrid cluster's tasks that ran to their end on this machine's node and on Fargate nodes
    #: (-1: not a hybrid cluster).
    tasks_local: int = -1
    tasks_cloud: int = -1
    #: What burst="always" would have cost on the same backlog (an estimate; -1: not estimated).
    always_cost: float = -1.0

    def text(self) -> str:
        where = ""
        if self.tasks_local >= 0:
            where = f" [hybrid: {self.tasks_local:,} tasks ran on this machine, {self.tasks_cloud:,} on Fargate"
            if self.always_cost >= 0:
                where += f"; burst='always' would have cost about {format_cost(self.always_cost)}"
            where += "]"
        stopped = f" (stopped: {self.reason})" if self.reason else ""
        return f"cluster {self.cluster_id} in {self.bill.text()}{where}{stopped}"


def report_path(cluster_id: str):
    path = config.home() / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{cluster_id}.json"


def read_report(cluster_id: str) -> Optional[ShutdownReport]:
    """The report a Fargate cluster's head wrote when it stopped, or None."""
    try:
        data = json.loads(report_path(cluster_id).read_text())
        return ShutdownReport(data["cluster_id"], CostReport(**data["bill"]), data.get("reason", ""),
                              data.get("tasks_local", -1), data.get("tasks_cloud", -1),
                              data.get("always_cost", -1.0))
    except (OSError, ValueError, TypeError, KeyError):
        return None


class FargateProvider(NodeProvider):
    name = "fargate"

    def __init__(self, options: ClusterOptions, session=None, settings: Settings | None = None,
                 launcher: FargateLauncher | None = None, clock=time.monotonic, quota_source=None) -> None:
        import boto3

        self.options = options
        self.cluster_id = options.cluster_id
        self.settings = settings or Settings.load()
        self.session = session or boto3.Session(region_name=options.region or self.settings.region)
        self.clock = clock
        account = self.session.client("sts").get_caller_identity()["Account"]
        self.bucket = self.settings.bucket_name(account)
        prefix = self._prefix = f"{self.settings.object_prefix}/{self.cluster_id}"
        self.store_url = f"s3://{self.bucket}/{prefix}"
        self.meter = CostMeter(self.settings.region, source=price_source(self.session), max_cost=options.max_cost)
        self._tls_requests = [0, 0]  # S3 PUTs of node bundles, GETs of them by nodes (one each at start)
        if options.codebuild_seconds:  # the image was built for this cluster
            self.meter.record_build(options.codebuild_seconds, options.arch)
        # What one node costs per second, for the always-burst estimate: looked up here, where
        # blocking is fine, not on the head's loop at the first tick (a Price List API call).
        self._node_cost_per_s = (self.meter.launch_cost(1, options.vcpu, options.memory_gb, options.arch,
                                                        options.spot) / 60.0) if options.local else 0.0

        # Mutual TLS: a CA for this cluster only, in this process's memory (its key never touches
        # disk, and dies with the head); the node's bundle goes to the cluster's prefix,
        # and the task environment carries just its location and hash (see starburst.tls).
        self.ca = tls.ClusterCA.create(self.cluster_id, valid_days=CA_DAYS)
        self._renewals = 0
        env = self._issue_certificates()
        self.launcher = launcher or FargateLauncher(
            self.session, self.settings, self.cluster_id, options.image, size=(options.cpu, options.memory),
            arch=options.arch, spot=options.spot, meter=self.meter, lease_s=options.lease_s, env=env,
        )
        self.tasks: dict[str, _NodeTask] = {}
        self.head: Head | None = None
        self.started = clock()
        self.message = ""
        self.stop_reason = ""
        self._connects: set[asyncio.Task] = set()
        self._launching: set[asyncio.Future] = set()
        self.quota_source = quota_source
        self._quota_read_at = clock()
        self.failed_starts = 0  # nodes in a row that stopped before joining
        self.failure_reasons: set[str] = set()
        self._no_launch_until = 0.0
        #: A hybrid cluster's node on this machine (``attach_local``), and its burst policy.
        self.local: LocalProvider | None = None
        self.policy = BurstPolicy(options.burst, options.max_wait, _start_seed())
        self.decision: Decision | None = None
        self._always_nodes: list[float] = []  # launch times of the nodes burst="always" would have now
        self._always_cost = 0.0

    def attach_local(self, local: LocalProvider) -> None:
        """Make this a hybrid cluster: ``local`` (whose node uses this cluster's S3 store) starts
        with the cluster, and Fargate nodes are launched when the burst policy says so."""
        self.local = local

    def _issue_certificates(self) -> dict[str, str]:
        """A new head identity and node bundle from the cluster CA; the bundle goes to S3. Returns
        the nodes' environment naming it (its location and hash)."""
        hours = CERT_DAYS * 24
        identity = self.ca.issue_head(valid_hours=hours)
        bundle = tls.make_node_bundle(self.ca.issue_node(valid_hours=hours))
        name = "node-bundle.json" if not self._renewals else f"node-bundle-{self._renewals}.json"
        key = f"{self._prefix}/tls/{name}"  # nodes running on an older bundle keep theirs
        self.session.client("s3").put_object(Bucket=self.bucket, Key=key, Body=bundle)
        self._tls_requests[0] += 1
        self.head_identity = identity
        self._credentials = identity.channel_credentials()
        self.renew_at = tls.certificate_expiry(identity.cert_pem) - _dt.timedelta(hours=hours / 2)
        return {"STARBURST_STORE": self.store_url, **tls.node_environment(f"s3://{self.bucket}/{key}", bundle)}

    def renew_certificates(self) -> bool:
        """Past half their life: a new head identity (new channels use it) and a new node bundle
        (nodes launched from now on get it); nodes already running trust the same CA, so they keep
        working. True when renewed."""
        if tls.now() < self.renew_at:
            return False
        self._renewals += 1
        env = self._issue_certificates()
        self.launcher.env = {**self.launcher.env, **env}
        log.info("renewed the cluster's certificates (valid %d days)", CERT_DAYS)
        return True

    def reread_quota(self) -> int | None:
        """Read the vCPU quota and the account's usage again; ``options.quota_workers`` becomes how
        many workers fit beside the account's other tasks now. Returns it (None: unreadable)."""
        from .quotas import ServiceQuotasSource, plan_waves

        if self.quota_source is None:
            self.quota_source = ServiceQuotasSource(region=self.settings.region, session=self.session)
        spot = self.options.spot
        try:
            limit = self.quota_source.fargate_vcpu_limit(spot)
            in_use = self.quota_source.current_vcpu_usage(spot)
        except Exception as exc:  # noqa: BLE001 - keep the last plan; try again later
            log.warning("could not read the Fargate vCPU quota again: %s", exc)
            return None
        others = max(0.0, in_use - len(self.tasks) * self.options.vcpu)
        workers = plan_waves(self.options.workers_max, self.options.vcpu, limit, others, spot).workers
        if workers != self.options.quota_workers:
            self._say(f"the Fargate vCPU quota now allows {workers} of {self.options.workers_max} workers "
                      f"({limit:g} vCPU, {others:g} in use by other tasks)")
            self.options.quota_workers = workers
        return workers

    @classmethod
    def from_config_file(cls, path: str) -> "FargateProvider":
        return cls(ClusterOptions.load(path))

    def meter_usage(self) -> None:
        """Hand the meter the cluster's S3 requests and bytes so far: the head's own store, what
        the drivers and the nodes' executors reported, the node bundles; data transfer out is
        what the head and drivers downloaded from S3 plus what the head received from nodes."""
        if self.head is None:
            return
        sched = self.head.scheduler
        nodes, drivers = sched.store_usage_nodes, sched.store_usage_drivers
        take = getattr(self.head.store, "usage", None)
        own = take() if take is not None else {}
        self.meter.record_usage(
            put_requests=nodes.put_requests + drivers.put_requests + own.get("put_requests", 0) + self._tls_requests[0],
            get_requests=nodes.get_requests + drivers.get_requests + own.get("get_requests", 0) + self._tls_requests[1],
            delete_requests=nodes.delete_requests + drivers.delete_requests + own.get("delete_requests", 0),
            bytes_uploaded=nodes.bytes_uploaded + drivers.bytes_uploaded + own.get("bytes_uploaded", 0),
            transfer_out_bytes=drivers.bytes_downloaded + own.get("bytes_downloaded", 0) + sched.bytes_from_nodes,
        )

    # ------------------------------------------------------------------ NodeProvider

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.local is not None and address.startswith("unix:"):  # this machine's node
            return self.local.channel(address)
        return grpc.aio.secure_channel(address, self._credentials,
                                       options=tls.secure_channel_options(self.cluster_id))

    def node_metadata(self, address: str = "") -> tuple[tuple[str, str], ...]:
        if self.local is not None and address.startswith("unix:"):
            return self.local.node_metadata(address)
        return ()

    def node_shape(self) -> pb.Resources:
        return pb.Resources(cpus=self.options.vcpu, memory=float(self.options.memory) * 2**20)

    async def start(self, head: "Head") -> None:
        """Launch the minimum number of workers now (RunTask answers in about a second); they
        join as they come up. Raises LaunchError when none can be launched."""
        self.head = head
        if self.local is not None:
            await self.local.start(head)  # tasks run here at once; Fargate nodes join as overflow
        want = self.options.workers_min
        if self.options.quota_workers is not None:
            want = min(want, self.options.quota_workers)
        if want:
            await self._launch(want, refuse=True)

    async def tick(self) -> None:
        assert self.head is not None
        if self.head.abort_reason or self.head.shutting_down:
            return
        self.meter_usage()
        if self._check_budget():
            return
        if tls.now() >= self.renew_at:
            await asyncio.to_thread(self.renew_certificates)
        await self._refresh()
        self._scale_down()
        if self.local is not None:
            await self._burst()
        else:
            await self._scale_up()

    async def stop(self) -> None:
        """Stop every task this cluster started, then write and log the shutdown report."""
        for connect in list(self._connects):
            connect.cancel()
        if self.local is not None:
            import shutil

            await self.local.stop()
            shutil.rmtree(self.local.store_dir, ignore_errors=True)  # its scratch directory (the store is S3)
        # A launch still running in its thread must finish (or give up) first, or tasks it starts
        # after stop_all's look would be missed.
        self.launcher.close()
        await asyncio.gather(*self._launching, return_exceptions=True)
        try:
            await asyncio.to_thread(self.launcher.stop_all, f"starburst: {self.stop_reason or 'cluster shut down'}")
        except LaunchError as exc:
            log.error("%s", exc)
            self.stop_reason = (self.stop_reason + "; " if self.stop_reason else "") + str(exc)
        if self.head is not None:
            self.meter.record_tasks_run(self.head.scheduler.tasks_finished)
            self.meter_usage()
        bill = self.meter.report()
        if self.head is not None:
            sched = self.head.scheduler
            bill = dataclasses.replace(bill, tasks_failed=sched.tasks_failed, tasks_cancelled=sched.tasks_cancelled)
        report = ShutdownReport(self.cluster_id, bill, self.stop_reason)
        if self.local is not None and self.head is not None:
            report.tasks_local, report.tasks_cloud = self.tasks_where()
            self._shadow_always(0)
            report.always_cost = self._always_cost
        data = {"cluster_id": report.cluster_id, "bill": dataclasses.asdict(report.bill), "reason": report.reason,
                "tasks_local": report.tasks_local, "tasks_cloud": report.tasks_cloud,
                "always_cost": report.always_cost}
        write_atomic(report_path(self.cluster_id), [json.dumps(data).encode()])
        log.info("%s", report.text())

    def status(self) -> pb.ClusterStatus:
        o = self.options
        status = pb.ClusterStatus(
            provider=self.name, cluster_id=self.cluster_id, region=o.region,
            nodes_pending=sum(1 for t in self.tasks.values() if t.link is None),
            nodes_requested=len(self.tasks),
            nodes_provisioning=sum(1 for t in self.tasks.values() if t.link is None and t.ecs_status == "PROVISIONING"),
            nodes_pulling=sum(1 for t in self.tasks.values()
                              if t.link is None and t.ecs_status in ("PENDING", "ACTIVATING")),
            workers_min=o.workers_min, workers_max=o.workers_max, node_size=o.describe_size(),
            cost_usd=self.meter.cost_so_far(), cost_per_hour=self.meter.burn_rate(),
            max_cost=o.max_cost or 0.0, message=self.message,
        )
        if self.local is not None:
            local, cloud = self.tasks_where()
            status.local_cpus = self.local.num_cpus
            p = self.policy
            status.burst = f"{p.mode} (max_wait {p.max_wait_s:g} s, node start ~{p.start_s:.0f} s)"
            status.burst_decision = self.decision.reason if self.decision else "no decision yet"
            status.burst_nodes = self.decision.nodes if self.decision else 0
            status.tasks_local, status.tasks_cloud = local, cloud
        return status

    def tasks_where(self) -> tuple[int, int]:
        """Tasks that ran to their end on this machine's node(s) and on Fargate nodes."""
        assert self.head is not None
        ran = self.head.scheduler.ran_on
        local = sum(n for node_id, n in ran.items() if node_id.startswith("local-"))
        return local, sum(ran.values()) - local

    def node_lost(self, address: str, reason: str) -> None:
        for task in self.tasks.values():
            if task.link is not None and task.address == address:
                task.link = None  # back to pending: re-dialled while ECS says it runs
                task.address_since = self.clock()
                task.idle_since = None

    # ------------------------------------------------------------------ launching and stopping

    async def _launch(self, n: int, refuse: bool = False) -> int:
        """Launch up to ``n`` nodes; returns how many started. Over budget: raises BudgetError when
        ``refuse`` (at start), else says so and launches nothing."""
        launch = asyncio.ensure_future(asyncio.to_thread(self.launcher.launch, n))
        self._launching.add(launch)
        launch.add_done_callback(self._launching.discard)
        try:
            launched = await asyncio.shield(launch)  # a cancelled tick must not orphan it: stop() waits
        except BudgetError as exc:
            if refuse:
                raise
            self._say(str(exc))
            return 0
        now = self.clock()
        for arn in launched:
            self.tasks[arn] = _NodeTask(arn, now)
        self._tls_requests[1] += len(launched)
        if launched.waves or len(launched) < n:
            self._say(launched.message)
        return len(launched)

    async def _stop(self, tasks: list[_NodeTask], reason: str) -> None:
        """StopTask: ECS sends SIGTERM, the node drains (anything queued there goes back to the
        head unrun) and exits; its stream's end removes it from the scheduler."""
        for task in tasks:
            task.stop_reason = reason
            self.tasks.pop(task.arn, None)
        try:
            await asyncio.to_thread(self.launcher.stop, [t.arn for t in tasks], f"starburst: {reason}")
        except LaunchError as exc:
            log.error("%s", exc)

    def _stop_soon(self, victims: list[_NodeTask], reason: str) -> None:
        """Stop these nodes: at once they count as gone (a later tick or the other scaling rule
        can't pick them again) and get no new work (drained); StopTask runs in the background."""
        assert self.head is not None
        for task in victims:
            self.tasks.pop(task.arn, None)
            node = getattr(task.link, "node", None)
            if node is not None:
                self.head.scheduler.drain(node)
        stopping = asyncio.ensure_future(self._stop(victims, reason))
        self._connects.add(stopping)
        stopping.add_done_callback(self._connects.discard)

    def _say(self, message: str) -> None:
        self.message = message
        log.warning("%s", message)

    # ------------------------------------------------------------------ the periodic steps

    def _check_budget(self) -> bool:
        limit = self.options.max_cost
        if limit is None:
            return False
        # What the running nodes will have cost a little later (by then they must be stopped).
        if not would_exceed(limit, self.meter.cost_so_far(self.meter.clock() + BUDGET_MARGIN_S + 1.0)):
            return False
        spent = self.meter.cost_so_far()
        self.stop_reason = (f"max_cost {format_cost(limit)} reached ({format_cost(spent)} spent over "
                            f"{format_duration(self.clock() - self.started)}); the cluster is stopped, its workers "
                            "with it. To go on: starburst.shutdown(), then init() again with a higher max_cost.")
        assert self.head is not None
        self.head.abort(self.stop_reason)
        return True

    async def _refresh(self) -> None:
        """Notice stopped tasks, learn the addresses of new ones, dial those not connected."""
        waiting = [t for t in self.tasks.values() if t.link is None]
        if not waiting:
            return
        described = await asyncio.to_thread(self.launcher.describe, [t.arn for t in waiting])
        for d in described:
            if d.get("taskArn") in self.tasks and d.get("lastStatus"):
                self.tasks[d["taskArn"]].ecs_status = d["lastStatus"]
        stopped = stop_reasons(described)
        for arn, why in stopped.items():
            task = self.tasks.pop(arn, None)
            if task is None:
                continue
            log.warning("node task %s stopped: %s", arn.rsplit("/", 1)[-1], why)
            try:
                self.meter.task_stopped(arn)
            except KeyError:
                pass
            if not task.joined:
                self.failed_starts += 1
                self.failure_reasons.add(why)
                self._no_launch_until = self.clock() + RELAUNCH_BACKOFF_S
        if self.failed_starts >= min(self.options.workers_max, MAX_FAILED_STARTS):
            # Nodes stop before they join, again and again: the image can't be pulled, the
            # container crashes at start, Spot capacity is reclaimed... Say why and stop.
            assert self.head is not None
            reasons = "; ".join(sorted(self.failure_reasons))
            self.stop_reason = (f"every node stopped before joining the cluster: {reasons} "
                                f"({self.failed_starts} in a row; the nodes' logs are in CloudWatch "
                                f"log group {self.settings.log_group})")
            self.head.abort(self.stop_reason)
            return
        need = [t for t in self.tasks.values() if t.link is None and not t.address]
        if need:
            arns = {t.arn for t in need}
            found = await asyncio.to_thread(self.launcher.addresses_of,
                                            [d for d in described if d["taskArn"] in arns])
            for task in need:
                if task.arn in found:
                    task.address, task.address_since = found[task.arn], self.clock()
        for task in list(self.tasks.values()):
            if task.link is None and task.address and not task.connecting:
                if self.clock() - task.address_since > CONNECT_GIVE_UP_S:
                    why = (f"node did not answer at {task.address} for {CONNECT_GIVE_UP_S:g} s (does "
                           f"the security group {self.settings.security_group} admit this machine's address?)")
                    self._say(why)
                    if not task.joined:
                        self.failed_starts += 1
                        self.failure_reasons.add(why)
                    await self._stop([task], why)
                    continue
                task.connecting = True
                connect = asyncio.ensure_future(self._connect(task))
                self._connects.add(connect)
                connect.add_done_callback(self._connects.discard)

    async def _connect(self, task: _NodeTask) -> None:
        from ..head.nodes import VersionDriftError

        assert self.head is not None
        try:
            link = await self.head.connect_node(task.address)
            if self.tasks.get(task.arn) is not task:  # stopped meanwhile (e.g. a Spot interruption)
                link.shutdown()
                return
            task.link = link
            task.idle_since = self.clock()
            if not task.joined and self.local is not None:  # learn how long nodes take to join
                start_s = learn_start(self.policy.start_s, self.clock() - task.launched)
                self.policy = dataclasses.replace(self.policy, start_s=max(start_s, 1e-3))
            task.joined = True
            self.failed_starts = 0
            self.failure_reasons.clear()
            log.info("node %s joined at %s", task.arn.rsplit("/", 1)[-1], task.address)
        except VersionDriftError as exc:
            self.stop_reason = str(exc)
            self.head.abort(str(exc))
        except ConnectionError as exc:
            log.debug("node at %s not answering yet: %s", task.address, exc)
        finally:
            task.connecting = False

    def _busy(self, task: _NodeTask) -> bool:
        node = getattr(task.link, "node", None)
        if node is None:
            return True
        assert self.head is not None
        return self.head.scheduler.node_busy(node)

    def _scale_down(self) -> None:
        assert self.head is not None
        now = self.clock()
        idle = []
        for task in self.tasks.values():
            if task.link is None:
                continue
            if self._busy(task) or self.head.scheduler.has_waiting():
                task.idle_since = None
            elif task.idle_since is None:
                task.idle_since = now
            elif now - task.idle_since >= self.options.idle_timeout:
                idle.append(task)
        surplus = len(self.tasks) - self.options.workers_min
        if idle and surplus > 0:
            self._stop_soon(idle[:surplus], f"idle for {format_duration(self.options.idle_timeout)}")

    async def _scale_up(self) -> None:
        assert self.head is not None
        scheduler = self.head.scheduler
        demand = scheduler.demand()
        per_node = max(1, math.floor(self.options.vcpu))
        want = max(self.options.workers_min, min(self.options.workers_max, math.ceil(demand / per_node)))
        quota = self.options.quota_workers
        if quota is not None and want > quota:
            await self._reread_quota()
        await self._launch_missing(min(want, self._max_nodes()) - len(self.tasks))

    def _max_nodes(self) -> int:
        """workers_max, within what the quota lets run beside the account's other tasks."""
        o = self.options
        return o.workers_max if o.quota_workers is None else min(o.workers_max, max(o.quota_workers, o.workers_min))

    async def _reread_quota(self) -> bool:
        """Read the quota again (at most once a minute) when it holds workers back; True if it now
        allows a different number (the account's other tasks came or went)."""
        before = self.options.quota_workers
        if before is None or self.clock() - self._quota_read_at < QUOTA_REREAD_S:
            return False
        self._quota_read_at = self.clock()
        return await asyncio.to_thread(self.reread_quota) != before

    async def _launch_missing(self, missing: int) -> None:
        """Launch ``missing`` more nodes unless a recent failure says to wait."""
        if missing <= 0 or self.clock() < self._no_launch_until:
            return
        try:
            if not await self._launch(missing):
                self._no_launch_until = self.clock() + 30.0
        except LaunchError as exc:
            self._say(f"could not launch {missing} more node(s): {exc}")
            self._no_launch_until = self.clock() + 30.0

    # ------------------------------------------------------------------ a hybrid cluster's bursts

    def burst_inputs(self) -> tuple[Backlog, Capacity]:
        """What the burst policy sees now: the backlog (from the scheduler's per-function run
        times) and the capacity (this machine's CPUs, the Fargate nodes, the quota's bound)."""
        assert self.head is not None and self.local is not None
        o = self.options
        backlog = estimate_backlog(*self.head.scheduler.backlog())
        return backlog, Capacity(local_cpus=self.local.num_cpus, cpus_per_node=o.vcpu, nodes=len(self.tasks),
                                 max_nodes=self._max_nodes(), min_nodes=o.workers_min)

    async def _burst(self) -> None:
        """Launch or stop Fargate nodes as the burst policy decides. Surplus nodes go the way idle
        ones do (drained: what is queued there comes back to the head unrun, running tasks finish),
        those still starting first, then the least loaded."""
        assert self.head is not None
        backlog, capacity = self.burst_inputs()
        decision = decide(backlog, capacity, self.policy)
        always = dataclasses.replace(self.policy, mode="always")
        self._shadow_always(decide(backlog, dataclasses.replace(capacity, nodes=len(self._always_nodes)), always).nodes)
        quota = self.options.quota_workers
        if quota is not None and decision.nodes >= quota and await self._reread_quota():
            decision = decide(*self.burst_inputs(), self.policy)  # held back by the quota, which moved
        if self.decision is None or decision.nodes != self.decision.nodes:
            log.info("burst: %d Fargate node(s): %s", decision.nodes, decision.reason)
        self.decision = decision
        missing = decision.nodes - len(self.tasks)
        if missing > 0:
            await self._launch_missing(missing)
        elif missing < 0:
            def order(task: _NodeTask) -> tuple[int, float]:
                node = getattr(task.link, "node", None)
                if node is None:
                    return (0, 0.0)
                return (1, node.load())

            self._stop_soon(sorted(self.tasks.values(), key=order)[:-missing], f"burst over: {decision.reason}")

    def _shadow_always(self, nodes: int) -> None:
        """Follow the nodes burst="always" would have on the same backlog, and what they would
        cost (each billed from launch, at least a minute). An estimate: with more nodes the backlog
        would have drained sooner, and nodes stopped while starting may cost less on AWS."""
        per_s = self._node_cost_per_s
        now = self.clock()
        while len(self._always_nodes) < nodes:
            self._always_nodes.append(now)
        while len(self._always_nodes) > nodes:
            self._always_cost += max(60.0, now - self._always_nodes.pop()) * per_s


def _start_seed() -> float:
    import os

    try:
        return float(os.environ.get("STARBURST_FARGATE_START_S", "")) or DEFAULT_START_S
    except ValueError:
        return DEFAULT_START_S
