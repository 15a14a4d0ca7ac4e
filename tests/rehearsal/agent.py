"""A fake ECS agent: runs the real node entry point for every task the head launches in moto.

moto records the tasks that starburst's ``FargateLauncher`` starts, but runs nothing. This agent
plays the platform's part, as a local stand-in for Fargate::

    with tasks_stay_running(endpoint), FakeEcsAgent(endpoint, "us-east-1", "starburst",
                                                    node_env={"STARBURST_STORE": ...},
                                                    log_dir=tmp_path) as agent:
        arns = launcher.launch(2)
        agent.wait_for_nodes(2)
        launcher.addresses(arns)        # {arn: "127.0.0.2:47000", ...}, through the real resolver

For each task that moto lists with desiredStatus RUNNING, the agent

- picks a fresh loopback address ``127.0.0.N`` (N from 2; one whose node port is free and that no
  other agent on this machine holds),
- gives the task's network interface that address as its public IP: it allocates an Elastic IP
  ``127.0.0.N`` in moto's EC2 and associates it with the ENI moto created for the task, so
  starburst's unchanged ``default_address_resolver`` (``DescribeNetworkInterfaces`` →
  ``Association.PublicIp``) finds it,
- starts ``python -m starburst.node.entrypoint`` in a new session (its "container"), with the
  environment ``os.environ`` + ``node_env`` + the task definition container's environment + the
  task's container overrides (later ones win) + ``STARBURST_HOST`` and ``HOSTNAME`` (the task id,
  the last part of its ARN); its stdout and stderr go to ``log_dir/node-<task id>.log``.

As ECS would, it sends SIGTERM to the node when the task's desiredStatus turns STOPPED (StopTask)
and SIGKILL to the whole container ``stop_grace_s`` later; and when a node exits on its own, it
kills what is left of the container and stops the task in moto with the reason "Essential
container in task exited". ``node_env`` is where the test puts what a real task gets from its
platform: credentials of its role, endpoints, the object store URL.

With ``latency_ms > 0`` the node listens on a second loopback address and a ``LatencyProxy``
(round trip ``latency_ms``) listens on the advertised ``127.0.0.N:port``: traffic between the head
and the node crosses the proxy (``NodeRecord.proxy`` has its byte counts).

moto moves a task's lastStatus one step each time the task is described, so unattended the agent's
own polling would stop every task within a few polls: use ``tasks_stay_running(endpoint)`` (or set
moto's ``ecs::task`` transition to manual yourself) while the agent runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import IO, Iterator, Optional

from starburst.aws.launcher import eni_of

from .latency_proxy import LatencyProxy

log = logging.getLogger(__name__)

#: The stop reason ECS gives a task whose essential container exited.
EXITED_REASON = "Essential container in task exited"
#: DescribeTasks takes at most this many tasks.
_DESCRIBE_BATCH = 100
#: The loopback addresses handed out: 127.0.0.2 .. 127.0.0.254.
_FIRST_HOST, _LAST_HOST = 2, 254


@contextlib.contextmanager
def tasks_stay_running(endpoint: str) -> Iterator[None]:
    """Within the block, moto's ECS tasks stay RUNNING until something stops them (moto's
    ``ecs::task`` transition set to manual); restored to moto's default afterwards."""
    _state_manager(endpoint, "set-transition",
                   {"model_name": "ecs::task",
                    "transition": {"progression": "manual", "times": 10**9}})
    try:
        yield
    finally:
        _state_manager(endpoint, "unset-transition", {"model_name": "ecs::task"})


def _state_manager(endpoint: str, path: str, body: dict) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/state-manager/{path}",
                                 data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"moto state manager {path}: HTTP {resp.status}")


def _env_list(items: Optional[list[dict]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in items or []}


def _port_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (a node's gRPC server sets SO_REUSEPORT,
    so a node still holding it makes this bind fail rather than share the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _claim(host: str) -> Optional[IO]:
    """An exclusive claim on a loopback address among the agents on this machine (a locked file,
    held while the node runs; released if the process dies), or None if another agent holds it."""
    directory = pathlib.Path(tempfile.gettempdir()) / "starburst-rehearsal-loopback"
    directory.mkdir(exist_ok=True)
    claim = open(directory / host, "a")
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        claim.close()
        return None
    return claim


def _accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class NodeRecord:
    """One task the agent runs: its advertised address, its process and what became of it."""

    task_arn: str
    task_id: str
    #: The public IP the head finds (the Elastic IP): the node's, or its proxy's.
    ip: str
    port: int
    #: Where the node process itself listens (``ip`` unless there is a latency proxy).
    listen_host: str
    proc: subprocess.Popen
    log_path: pathlib.Path
    env: dict[str, str]
    eni_id: Optional[str] = None
    allocation_id: Optional[str] = None
    association_id: Optional[str] = None
    proxy: Optional[LatencyProxy] = None
    #: The agent's claims on ``ip`` and ``listen_host`` (see ``_claim``).
    claims: list[IO] = dataclasses.field(default_factory=list, repr=False)
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    #: When the agent saw the task stopped in moto and sent SIGTERM (None: not yet).
    term_sent_at: Optional[float] = None
    #: The stop reason moto gave when the task was stopped by someone else.
    stopped_reason: str = ""
    #: Whether the agent had to SIGKILL the container after the grace period.
    killed_after_grace: bool = False
    #: Whether the agent stopped the task in moto because the node exited on its own.
    stopped_by_agent: bool = False
    #: The node's exit status once the agent has handled its exit (negative: a signal).
    exit_code: Optional[int] = None

    @property
    def address(self) -> str:
        """``ip:port``, what ``FargateLauncher.addresses`` should return for this task."""
        return f"{self.ip}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def listening(self) -> bool:
        """Whether the node process accepts TCP connections now."""
        return self.alive() and _accepts(self.listen_host, self.port)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class FakeEcsAgent:
    """Runs a local node process for every RUNNING task of ``ecs_cluster`` in the moto server at
    ``endpoint`` (see the module docstring). ``latency_ms``: round trip added between the head
    and each node by a proxy (0: none). ``poll_s``: seconds between polls of moto.
    ``stop_grace_s``: seconds between SIGTERM and SIGKILL when a task is stopped.
    ``firewall``: enforce the task's security groups as AWS does for the head's connections
    (which come from 127.0.0.1): unless a group admits 127.0.0.1 on the node's port, the node
    listens on another loopback address and nothing answers at its public one."""

    def __init__(self, endpoint: str, region: str, ecs_cluster: str, node_env: dict[str, str],
                 log_dir: pathlib.Path, latency_ms: float = 0.0, poll_s: float = 0.2,
                 stop_grace_s: float = 10.0, firewall: bool = False, start_delay_s: float = 0.0):
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms!r}")
        self.endpoint = endpoint
        self.region = region
        self.ecs_cluster = ecs_cluster
        self.node_env = dict(node_env)
        self.log_dir = pathlib.Path(log_dir)
        self.latency_ms = float(latency_ms)
        self.poll_s = float(poll_s)
        self.stop_grace_s = float(stop_grace_s)
        self.firewall = firewall
        #: Seconds between a task appearing and its node process starting (Fargate's provisioning
        #: and image pull, scaled down for a run).
        self.start_delay_s = float(start_delay_s)
        self._due: dict[str, float] = {}  # task arn -> when its node starts (tasks waiting out the delay)
        #: Problems met by the polling thread (it carries on), newest last.
        self.errors: list[str] = []
        self._nodes: dict[str, NodeRecord] = {}
        self._seen: set[str] = set()  # every task handled, including those that failed to start
        self._definitions: dict[str, dict] = {}
        self._next_host = _FIRST_HOST
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.ecs = self.ec2 = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeEcsAgent:
        """Check that loopback addresses beyond 127.0.0.1 work here, then start polling."""
        if self._closed:
            raise RuntimeError("a closed FakeEcsAgent cannot be started again")
        if self._thread is not None:
            return self
        probe = f"127.0.0.{_FIRST_HOST}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((probe, 0))
            except OSError as exc:
                raise RuntimeError(f"cannot bind {probe}: this machine routes only 127.0.0.1 to "
                                   f"loopback ({exc}); the agent needs all of 127.0.0.0/8") from exc
        self.log_dir.mkdir(parents=True, exist_ok=True)
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(aws_access_key_id="testing",
                                        aws_secret_access_key="testing",
                                        aws_session_token="testing", region_name=self.region)
        config = Config(retries={"mode": "standard", "total_max_attempts": 3},
                        connect_timeout=5, read_timeout=30)
        self.ecs = session.client("ecs", endpoint_url=self.endpoint, config=config)
        self.ec2 = session.client("ec2", endpoint_url=self.endpoint, config=config)
        self._thread = threading.Thread(target=self._run, name="fake-ecs-agent", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop polling and kill every node this agent started (with its container's other
        processes), their proxies too. Tasks are left as moto has them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            records = list(self._nodes.values())
        for record in records:
            self._kill_container(record)
        for record in records:
            with contextlib.suppress(subprocess.TimeoutExpired):
                record.proc.wait(timeout=10)
            if record.proxy is not None:
                record.proxy.close()
            self._release_claims(record)
            if record.exit_code is None:
                record.exit_code = record.proc.returncode
        with self._lock:
            self._changed.notify_all()

    def __enter__(self) -> FakeEcsAgent:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- introspection -------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        """``{task arn: NodeRecord}`` of every node started so far (a copy)."""
        with self._lock:
            return dict(self._nodes)

    @property
    def started_count(self) -> int:
        with self._lock:
            return len(self._nodes)

    def alive(self) -> list[str]:
        """The task ARNs whose node process is running."""
        return [arn for arn, record in self.nodes.items() if record.alive()]

    def wait_for_nodes(self, n: int, timeout: float = 30.0) -> list[NodeRecord]:
        """Wait until at least ``n`` nodes are running and accept connections; returns them.
        Raises TimeoutError (with the tail of each node's log) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            ready = [r for r in self.nodes.values() if r.listening()]
            if len(ready) >= n:
                return ready
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(ready)} of {n} nodes listening after {timeout:g} s "
                                   f"({self.started_count} started)" + self._diagnostics())
            with self._lock:
                self._changed.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))

    def kill(self, task_arn: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a node's main process (as a crash or OOM kill would); the agent then
        handles the exit as for any node that exits on its own."""
        record = self.nodes[task_arn]
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.proc.pid, sig)

    def wait_exited(self, task_arn: str, timeout: float = 20.0) -> int:
        """Wait until the agent has handled the node's exit (moto updated); its exit status."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._nodes[task_arn].exit_code is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"node of {task_arn} still running after {timeout:g} s"
                                       + self._diagnostics([task_arn]))
                self._changed.wait(timeout=min(left, 0.1))
            return self._nodes[task_arn].exit_code  # type: ignore[return-value]

    def wait_all_exited(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until every node started so far has exited and been handled; their exit
        statuses. Raises TimeoutError naming the ones still running."""
        deadline = time.monotonic() + timeout
        for arn in self.nodes:
            self.wait_exited(arn, timeout=max(0.0, deadline - time.monotonic()))
        return {arn: r.exit_code for arn, r in self.nodes.items()}  # type: ignore[misc]

    def _diagnostics(self, arns: Optional[list[str]] = None) -> str:
        lines = [f"\nagent errors: {self.errors[-5:]}"] if self.errors else []
        for arn, record in self.nodes.items():
            if arns is not None and arn not in arns:
                continue
            tail = "\n    ".join(record.log_text().splitlines()[-15:])
            lines.append(f"\n--- node {record.task_id} {record.address} "
                         f"(exit {record.proc.poll()}): {record.log_path}\n    {tail}")
        return "".join(lines)

    # -- the polling thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("fake ECS agent: %r", exc, exc_info=True)
                self.errors.append(repr(exc))
            self._stop.wait(self.poll_s)

    def _poll(self) -> None:
        running = set(self._list_running())
        now = time.monotonic()
        with self._lock:
            new = sorted(running - self._seen)
            if self.start_delay_s > 0:
                for arn in new:
                    self._due.setdefault(arn, now + self.start_delay_s)
                for arn in [a for a in self._due if a not in running]:  # stopped while "provisioning"
                    del self._due[arn]
                    self._seen.add(arn)
                new = [a for a in new if self._due[a] <= now]
                for arn in new:
                    del self._due[arn]
        for task in self._describe(new):
            if self._stop.is_set():
                return
            with self._lock:
                self._seen.add(task["taskArn"])  # one attempt per task, even if it fails
            if task.get("desiredStatus") == "RUNNING" and task.get("lastStatus") != "STOPPED":
                self._start(task)

        records = self.nodes
        # StopTask: the task is no longer listed as RUNNING while its node still runs.
        to_stop = [a for a, r in records.items()
                   if a not in running and r.term_sent_at is None and r.alive()]
        for task in self._describe(to_stop):
            if task.get("desiredStatus") == "STOPPED":
                self._terminate(records[task["taskArn"]], task.get("stoppedReason", ""))

        now = time.monotonic()
        for record in records.values():
            if record.exit_code is not None:
                continue
            if record.proc.poll() is not None:
                self._handle_exit(record)
            elif (record.term_sent_at is not None and not record.killed_after_grace
                  and now - record.term_sent_at >= self.stop_grace_s):
                log.info("node %s still running %g s after SIGTERM: SIGKILL", record.task_id,
                         self.stop_grace_s)
                record.killed_after_grace = True
                self._kill_container(record)

    def _list_running(self) -> list[str]:
        arns: list[str] = []
        token = None
        while True:
            kwargs = {"cluster": self.ecs_cluster, "desiredStatus": "RUNNING"}
            if token:
                kwargs["nextToken"] = token
            answer = self.ecs.list_tasks(**kwargs)
            arns += answer.get("taskArns", [])
            token = answer.get("nextToken")
            if not token:
                return arns

    def _describe(self, arns: list[str]) -> list[dict]:
        tasks: list[dict] = []
        for i in range(0, len(arns), _DESCRIBE_BATCH):
            answer = self.ecs.describe_tasks(cluster=self.ecs_cluster,
                                             tasks=arns[i:i + _DESCRIBE_BATCH])
            tasks += answer.get("tasks", [])
        return tasks

    # -- starting a node -----------------------------------------------------------------------

    def _container(self, task: dict) -> tuple[str, dict[str, str]]:
        """The essential container's name and environment in the task's definition."""
        arn = task["taskDefinitionArn"]
        if arn not in self._definitions:
            self._definitions[arn] = self.ecs.describe_task_definition(
                taskDefinition=arn)["taskDefinition"]
        containers = self._definitions[arn].get("containerDefinitions", [])
        container = next((c for c in containers if c.get("essential", True)), containers[0])
        return container["name"], _env_list(container.get("environment"))

    def _task_env(self, task: dict) -> dict[str, str]:
        """What the container sees: the definition's environment, then the task's overrides."""
        name, env = self._container(task)
        for override in task.get("overrides", {}).get("containerOverrides", []):
            if override.get("name") == name:
                env.update(_env_list(override.get("environment")))
        return env

    def _take_host(self, port: int, claims: list[IO]) -> str:
        """The next loopback address that no other agent holds and on which ``port`` is free;
        its claim is added to ``claims``."""
        while self._next_host <= _LAST_HOST:
            host = f"127.0.0.{self._next_host}"
            self._next_host += 1
            claim = _claim(host)
            if claim is not None and _port_free(host, port):
                claims.append(claim)
                return host
            if claim is not None:
                claim.close()
            log.info("%s:%d is taken; skipping %s", host, port, host)
        raise RuntimeError(f"no free loopback address left for port {port} "
                           f"(127.0.0.{_FIRST_HOST}-{_LAST_HOST} used)")

    def _start(self, task: dict) -> None:
        arn = task["taskArn"]
        task_id = arn.rsplit("/", 1)[-1]
        task_env = self._task_env(task)
        port = int(task_env.get("STARBURST_NODE_PORT") or self.node_env.get("STARBURST_NODE_PORT")
                   or 47000)
        claims: list[IO] = []
        ip = self._take_host(port, claims)
        blocked = self.firewall and not self._admits_head(eni_of(task), port)
        listen_host = self._take_host(port, claims) if self.latency_ms > 0 or blocked else ip
        env = {**os.environ, **self.node_env, **task_env,
               "STARBURST_HOST": listen_host, "HOSTNAME": task_id}
        log_path = self.log_dir / f"node-{task_id}.log"
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "starburst.node.entrypoint"],
                                        stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        except OSError as exc:
            for claim in claims:
                claim.close()
            self.errors.append(f"{task_id}: {exc!r}")
            self.ecs.stop_task(cluster=self.ecs_cluster, task=arn,
                               reason=f"CannotStartContainerError: {exc}"[:255])
            return
        record = NodeRecord(task_arn=arn, task_id=task_id, ip=ip, port=port,
                            listen_host=listen_host, proc=proc, log_path=log_path, env=env,
                            eni_id=eni_of(task), claims=claims)
        with self._lock:
            self._nodes[arn] = record
            self._changed.notify_all()
        if listen_host != ip and not blocked:
            record.proxy = LatencyProxy(ip, port, listen_host, port, rtt_ms=self.latency_ms).start()
        if record.eni_id is None:
            self.errors.append(f"{task_id}: no network interface in the task's attachments; "
                               "no public IP given")
        else:
            self._give_public_ip(record)
        log.info("task %s: node pid %d at %s (listening on %s)", task_id, proc.pid,
                 record.address, listen_host)

    def _admits_head(self, eni_id: Optional[str], port: int) -> bool:
        """Whether a security group of the task's ENI admits TCP from 127.0.0.1 on ``port``."""
        import ipaddress

        if eni_id is None:
            return False
        (eni,) = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"]
        groups = [g["GroupId"] for g in eni.get("Groups", [])]
        head = ipaddress.ip_address("127.0.0.1")
        for group in self.ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"] if groups else []:
            for perm in group.get("IpPermissions", []):
                ports_ok = perm.get("IpProtocol") == "-1" or (
                    perm.get("IpProtocol") == "tcp" and perm.get("FromPort", 0) <= port <= perm.get("ToPort", 0))
                if ports_ok and any(head in ipaddress.ip_network(r["CidrIp"]) for r in perm.get("IpRanges", [])):
                    return True
        return False

    def _give_public_ip(self, record: NodeRecord) -> None:
        """An Elastic IP ``record.ip`` on the task's ENI: moto then reports it as the ENI's
        ``Association.PublicIp``, which is what starburst's resolver reads."""
        allocation = self.ec2.allocate_address(Domain="vpc", Address=record.ip)
        record.allocation_id = allocation["AllocationId"]
        association = self.ec2.associate_address(AllocationId=record.allocation_id,
                                                 NetworkInterfaceId=record.eni_id)
        record.association_id = association.get("AssociationId")

    # -- stopping ------------------------------------------------------------------------------

    def _terminate(self, record: NodeRecord, reason: str) -> None:
        """StopTask seen: SIGTERM to the node (PID 1 of the container), as ECS does."""
        log.info("task %s stopped (%s): SIGTERM to node pid %d", record.task_id, reason,
                 record.proc.pid)
        record.stopped_reason = reason
        record.term_sent_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.proc.pid, signal.SIGTERM)

    @staticmethod
    def _kill_container(record: NodeRecord) -> None:
        """SIGKILL everything in the node's session: the node and its executors."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.proc.pid, signal.SIGKILL)

    def _handle_exit(self, record: NodeRecord) -> None:
        """The node exited: end the rest of its container, drop its proxy and public IP, and
        stop its task in moto unless it was stopped already."""
        self._kill_container(record)
        if record.proxy is not None:
            record.proxy.close()
        self._release_public_ip(record)
        self._release_claims(record)
        if record.term_sent_at is None:
            (task,) = self._describe([record.task_arn]) or [{}]
            if task.get("desiredStatus") == "RUNNING":
                self.ecs.stop_task(cluster=self.ecs_cluster, task=record.task_arn,
                                   reason=EXITED_REASON)
                record.stopped_by_agent = True
            else:
                record.stopped_reason = task.get("stoppedReason", "")
        log.info("task %s: node exited with %s", record.task_id, record.proc.returncode)
        with self._lock:
            record.exit_code = record.proc.returncode
            self._changed.notify_all()

    @staticmethod
    def _release_claims(record: NodeRecord) -> None:
        for claim in record.claims:
            claim.close()
        record.claims.clear()

    def _release_public_ip(self, record: NodeRecord) -> None:
        """A stopped task's ENI loses its public IP (moto keeps the ENI itself)."""
        if record.allocation_id is None:
            return
        try:
            if record.association_id:
                self.ec2.disassociate_address(AssociationId=record.association_id)
            self.ec2.release_address(AllocationId=record.allocation_id)
        except Exception as exc:  # noqa: BLE001 - best effort (moto may have been reset)
            self.errors.append(f"{record.task_id}: releasing {record.ip}: {exc!r}")
        record.allocation_id = record.association_id = None


__all__ = ["FakeEcsAgent", "NodeRecord", "tasks_stay_running", "EXITED_REASON"]
