"""The public task API: init, shutdown, remote, get, wait, put, cancel (Ray Core semantics)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Sequence, TypeVar, overload

from . import _runtime
from .generators import ObjectRefGenerator, wait_with_generators
from .object_ref import ObjectRef
from .options import check_timeout
from .progress import DELAY_S as PROGRESS_DELAY_S, AutoProgress, configure_progress
from .remote_function import RemoteFunction

log = logging.getLogger("starburst")

_init_lock = threading.RLock()
_started_head = None  # driver.process.HeadInfo of a head this process started

_INIT_ACCEPTED_NO_EFFECT = {
    "include_dashboard", "dashboard_host", "dashboard_port", "configure_logging", "logging_level",
    "logging_format", "logging_config", "object_store_memory", "local_mode", "job_config",
    "_temp_dir", "_system_config", "enable_resource_isolation", "storage", "labels", "_node_ip_address",
    "_memory", "_plasma_directory", "_redis_password", "_metrics_export_port", "_tracing_startup_hook",
}


class ClusterContext(dict):
    """What ``init()`` returns (Ray's RayContext): address info; usable as a context manager."""

    @property
    def address_info(self) -> dict:
        return dict(self)

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.get("address") or None)

    def __enter__(self) -> "ClusterContext":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()


def init(
    address: str | None = None,
    *,
    num_cpus: int | float | None = None,
    num_gpus: int | float | None = None,
    resources: dict[str, float] | None = None,
    ignore_reinit_error: bool = False,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    log_to_driver: bool = True,
    cluster: str = "local",
    workers: int | tuple[int, int] | None = None,
    cpu: float | str | None = None,
    memory: int | str | None = None,
    arch: str | None = None,
    spot: bool | None = None,
    idle_timeout: float | None = None,
    max_cost: float | None = None,
    region: str | None = None,
    image: str | None = None,
    lease: float | None = None,
    local: bool | None = None,
    burst: str | None = None,
    max_wait: float | None = None,
    auto_quota_request: bool | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> ClusterContext:
    """Connect this process to a starburst cluster, starting the embedded local one if needed.

    ``cluster="fargate"`` starts a cluster of Fargate tasks instead (after ``starburst setup``):
    ``workers`` (a number, or ``(min, max)`` to scale with the backlog; default 4), ``cpu`` and
    ``memory`` per worker (default 2 vCPU, ``"4GB"``; checked against Fargate's sizes), ``arch``
    (``"x86_64"`` or ``"arm64"``), ``spot``, ``idle_timeout`` (seconds before an idle worker above
    ``min`` stops; default 300), ``max_cost`` (US dollars: nothing launches past it, and reaching
    it stops the cluster), ``region``, ``image`` (default: built from this environment),
    ``lease`` (seconds a worker waits for a lost head before exiting; default 180) and
    ``auto_quota_request`` (when the vCPU quota is short: request an increase without asking).
    ``local=True`` makes it a hybrid cluster: tasks run on this machine's ``num_cpus`` at once and
    Fargate workers (``workers=N``: up to N) are launched only as overflow, as ``burst`` says:
    ``"auto"`` (default: when the backlog would keep this machine busy longer than ``max_wait``
    seconds, default 30, and cloud workers would arrive in time to help), ``"always"`` or ``"never"``.
    The cluster stops at ``shutdown()``, which prints its runtime and cost.

    With no ``address``: uses ``$STARBURST_ADDRESS`` (or ``$RAY_ADDRESS``) if set, else the head
    running for this user (started by ``starburst up`` or another ``init()``), else starts a local
    cluster with ``num_cpus`` executors (default: all CPUs) that stops at ``shutdown()``.
    ``address="auto"`` requires a running head; ``address="local"`` always starts a new one;
    ``address="host:port"`` connects to that head.

    ``progress=False`` turns off the progress bar that long ``get``/``wait`` calls show in a
    terminal or notebook (as does ``STARBURST_PROGRESS=0``).
    """
    global _started_head
    if os.name == "nt":
        raise RuntimeError("starburst runs on Linux and macOS; on Windows, use it inside WSL2")
    unknown = sorted(set(kwargs) - _INIT_ACCEPTED_NO_EFFECT)
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s) {unknown}")
    if kwargs.get("local_mode"):
        log.warning("local_mode is deprecated in Ray and ignored by starburst: tasks run in worker processes")
    given = {k: v for k, v in (("workers", workers), ("cpu", cpu), ("memory", memory), ("arch", arch),
                                ("spot", spot), ("idle_timeout", idle_timeout), ("max_cost", max_cost),
                                ("region", region), ("image", image), ("lease", lease),
                                ("local", local), ("burst", burst), ("max_wait", max_wait),
                                ("auto_quota_request", auto_quota_request)) if v is not None}
    fargate = _fargate_options(cluster, given)
    if fargate is not None and num_cpus is not None and not fargate[0].local:
        raise ValueError("num_cpus is for the local cluster; a Fargate cluster's size is workers= and cpu=")
    if num_gpus:
        raise ValueError("num_gpus: the local cluster has no GPUs in starburst yet")
    if resources:
        raise ValueError("custom resources are not supported on the local cluster yet")
    for name, value in (("num_cpus", num_cpus),):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if runtime_env is not None:
        from . import runtime_env as _renv

        if fargate is not None and isinstance(runtime_env, dict) and runtime_env.get("pip"):
            # The cluster's worker image is built with these (a derived image, its own hash).
            runtime_env = dict(runtime_env)
            from .envsync.spec import pip_requirements

            fargate[0].pip = pip_requirements(runtime_env.pop("pip"))
        runtime_env = _renv.validate(runtime_env, "init()")
    with _init_lock:
        if is_initialized():
            if ignore_reinit_error:
                log.info("starburst.init() called again; ignored (ignore_reinit_error=True)")
                return _context()
            raise RuntimeError(
                "Maybe you called starburst.init twice by accident? This error can be suppressed by "
                "passing in 'ignore_reinit_error=True' or by calling 'starburst.shutdown()' prior to "
                "'starburst.init()'."
            )
        if _runtime.executor_client_factory is not None:
            return _context()  # inside a task: the executor's session is used
        if address is None:
            address = os.environ.get("STARBURST_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
        from .driver.client import Client, GrpcTransport, HeadUnavailableError

        for attempt in range(3):
            head_address = _resolve_head(address, num_cpus, fargate)
            try:
                client = Client(
                    GrpcTransport(head_address), kind="driver", log_to_driver=log_to_driver,
                    namespace=namespace or "",
                )
                break
            except HeadUnavailableError:
                # The cluster we found was ending (its last driver had just left), or ended between
                # finding it and connecting: look again, and start another if none is left.
                if address not in (None, "auto") or _started_head is not None or attempt == 2:
                    raise
        _runtime.job_runtime_env = dict(runtime_env or {})
        _runtime.set_client(client)
        configure_progress(progress)
        _announce_dashboard(head_address, client.welcome.job_id if client.welcome else "")
        if _head_record(head_address).get("provider") == "fargate":
            from .progress import watch_launches

            watch_launches(head_address, client)  # a live line while workers launch and join
        return _context()


def _head_record(head_address: str | None) -> dict:
    """``head.json`` of the running head (if it is the head at ``head_address``), else {}."""
    import json

    from . import config

    try:
        info = json.loads(config.head_file().read_text())
    except (OSError, ValueError):
        return {}
    if head_address is not None and info.get("address") != head_address:
        return {}
    return info


def dashboard_url(head_address: str | None = None) -> str:
    """The running head's dashboard URL (with its token), from ``head.json``; "" if unknown."""
    return str(_head_record(head_address).get("dashboard") or "")


def _announce_dashboard(head_address: str, job_id: str) -> None:
    url = dashboard_url(head_address)
    if url:
        import sys

        job = f" (this job: {job_id}; 'starburst logs' shows its output later)" if job_id else ""
        print(f"starburst: dashboard at {url}{job}", file=sys.stderr)


def _fargate_options(cluster: str, given: dict[str, Any]):
    """The checked options of ``init(cluster="fargate", ...)`` (None for the local cluster)."""
    if cluster == "local":
        if given:
            raise ValueError(f"{sorted(given)} apply to cluster='fargate' only")
        return None
    if cluster != "fargate":
        raise ValueError(f"cluster={cluster!r}: use 'local' (the default, this machine) or 'fargate'")
    from .aws.cluster import check_options

    auto = given.pop("auto_quota_request", None)
    options = check_options(**given)
    return options, auto


def _resolve_head(address: str | None, num_cpus: float | None, fargate=None) -> str:
    global _started_head
    from .driver import process
    if address not in (None, "auto", "local"):
        if num_cpus is not None:
            raise ValueError("When connecting to an existing cluster, num_cpus must not be provided.")
        if fargate is not None:
            raise ValueError("cluster='fargate' starts a cluster: don't pass an address with it")
        return address.removeprefix("starburst://").removeprefix("ray://")
    with process.head_lock():
        running = process.find_head() if address != "local" else None
        if running is not None:
            if num_cpus is not None:
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus must not be provided "
                    f"(a head is running at {running.address}; stop it with 'starburst down')."
                )
            if fargate is not None and running.provider == "fargate":
                log.warning("a Fargate cluster (%s) is already running: using it as it is; the options "
                            "given to init() apply to a new cluster ('starburst down' stops this one)",
                            running.cluster_id)
            if fargate is None and running.provider == "fargate":
                from .aws.cluster import announce_attached

                announce_attached(running.address, running.cluster_id)
            if fargate is not None and running.provider != "fargate":
                raise RuntimeError(
                    f"a local cluster is running (pid {running.pid}); stop it with 'starburst down' "
                    "before starting a Fargate cluster, or call init() without cluster= to use it"
                )
            return running.address
        if address == "auto":
            raise ConnectionError(
                "Could not find a running starburst cluster (address='auto'). Start one with "
                "'starburst up', or call init() without an address to start a local one."
            )
        config_file = cluster_id = ""
        if fargate is not None:
            config_file, cluster_id = _prepare_fargate(*fargate)
        _started_head = process.start_head(num_cpus, exit_when_unused=True, cluster_config=config_file,
                                           cluster_id=cluster_id)
        return _started_head.address


def _prepare_fargate(options, auto_quota_request) -> tuple[str, str]:
    """Check and price the Fargate cluster on this machine; returns its options file for the head
    and its cluster id."""
    from . import config
    from .aws.cluster import prepare

    options = prepare(options, auto_quota_request=auto_quota_request)
    path = config.home() / "clusters" / f"{options.cluster_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(options.save(path)), options.cluster_id


def _context() -> ClusterContext:
    client = _runtime.peek_client()
    w = getattr(client, "welcome", None)
    return ClusterContext(
        address=getattr(getattr(client, "transport", None), "address", ""),
        session_id=w.session_id if w else "", job_id=w.job_id if w else "",
    )


def is_initialized() -> bool:
    """True when this process has a live session with a cluster (always True inside a task)."""
    if _runtime.executor_client_factory is not None:
        return True
    client = _runtime.peek_client()
    return client is not None and not client.closed


def shutdown() -> None:
    """Detach this driver from its cluster.

    A cluster started by an ``init()`` lives while any driver is attached: the last driver to leave
    (this one, or another process's) ends it, and when that is this process ``shutdown()`` waits
    for the cluster's processes to exit (a Fargate cluster then prints its cost). A cluster started
    by ``starburst up`` stays until ``starburst down``."""
    global _started_head
    if _runtime.executor_client_factory is not None:
        return
    with _init_lock:
        client = _runtime.peek_client()
        _runtime.set_client(None)
        _runtime.job_runtime_env = {}
        if client is not None:
            from .progress import stop_launch_watch

            stop_launch_watch()
            client.close()
            from .driver.client import drain_output

            drain_output(2.0)
        started, _started_head = _started_head, None
        if started is not None:
            from .driver import process

            others = process.drivers_attached(started.address)
            if others:
                log.info("the cluster stays up for the %d other driver(s) using it", others)
                return
            # The head exits once its last driver has gone; wait so no process outlives shutdown().
            # No client: init() was interrupted before it connected, so no driver will ever come.
            if client is None or not process.wait_exit(started.pid, 20 if started.provider == "local" else 180):
                process.stop_head(started)
            if started.provider != "local":
                _print_report(started.cluster_id)


def _print_report(cluster_id: str) -> None:
    import sys

    from .aws.provider import read_report

    report = read_report(cluster_id)
    if report is None:
        log.warning("the Fargate cluster %s left no shutdown report; 'starburst down --all' stops any "
                    "task it may have left", cluster_id)
        return
    print(f"starburst: {report.text()}", file=sys.stderr)


#: Seconds a script's unfinished tasks get to finish (and print) when the interpreter exits, before
#: the session ends and its unreferenced work is cancelled (``STARBURST_EXIT_GRACE_S``; 0: none).
EXIT_GRACE_S = 3.0


def _exit_grace() -> None:
    """At interpreter exit (not at an explicit ``shutdown()``): wait, up to the grace period, for the
    tasks this driver submitted and never waited for (fire-and-forget), as a short Ray script's
    ``f.remote()`` on its last line still runs and prints."""
    import time

    client = _runtime.peek_client()
    if client is None or client.closed or _runtime.executor_client_factory is not None:
        return
    try:
        grace = float(os.environ.get("STARBURST_EXIT_GRACE_S", EXIT_GRACE_S))
    except ValueError:
        grace = EXIT_GRACE_S
    from ._proto import starburst_pb2 as pb

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if client.request(pb.ActorRequest(outstanding=True), timeout=max(0.1, deadline - time.monotonic())
                              ).outstanding == 0:
                return
        except Exception:  # noqa: BLE001 - the session is gone: nothing to wait for
            return
        time.sleep(0.05)



F = TypeVar("F", bound=Callable)


@overload
def remote(function: F) -> RemoteFunction: ...
@overload
def remote(**options: Any) -> Callable[[F], RemoteFunction]: ...


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function: ``@remote`` or ``@remote(num_cpus=2, num_returns=2, ...)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "The @remote decorator must be applied either with no arguments and no parentheses, e.g. "
            "'@remote', or with keyword arguments only, e.g. '@remote(num_cpus=1)'."
        )

    def decorator(function: F) -> Any:
        return _make_remote(function, options)

    return decorator


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    if isinstance(target, type):
        from .actor import ActorClass

        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@remote expects a function, got {type(target).__name__}")
    return RemoteFunction(target, options)


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store; returns an ObjectRef to it."""
    if isinstance(value, ObjectRef):
        raise TypeError(
            "Calling 'put' on an ObjectRef is not allowed. If you really want to do this, you can wrap "
            "the ObjectRef in a list and call 'put' on it."
        )
    return _runtime.get_client().put(value)


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """Wait for and return the value(s) of ``object_refs`` (a single ref or a list, in order).

    Raises the task's error as soon as one is known, :class:`GetTimeoutError` after ``timeout``
    seconds (``timeout=0`` only looks).
    """
    if isinstance(object_refs, ObjectRefGenerator):
        return object_refs  # as in Ray: get() of a generator returns it (iterate it for the values)
    single = isinstance(object_refs, ObjectRef)
    if single:
        refs = [object_refs]
    elif isinstance(object_refs, list):
        refs = list(object_refs)
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, got a list "
                    f"containing {type(r).__name__}"
                )
    else:  # as in Ray, a tuple is refused too: pass a list
        raise ValueError(
            f"Invalid type of object refs, {type(object_refs).__name__}, is given. 'object_refs' must either "
            "be an ObjectRef or a list of ObjectRefs."
        )
    check_timeout(timeout)
    _check_alive(refs)
    client = _runtime.get_client()
    if len(refs) < 2 or (timeout is not None and timeout < PROGRESS_DELAY_S):  # no bar would show
        values = client.get(refs, timeout)
    else:
        with AutoProgress(refs, len(refs), "get"):
            values = client.get(refs, timeout)
    return values[0] if single else values


def wait(
    object_refs: list[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of the refs are ready or ``timeout`` passes.

    Returns ``(ready, not_ready)``, both in the order of ``object_refs``; ``ready`` has at most
    ``num_returns`` refs. An ``ObjectRefGenerator`` in the list is ready when its next item (or its
    end) is, as in Ray.
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expected a list of ObjectRef, got a single ObjectRef")
    if not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ObjectRef, got {type(object_refs).__name__}")
    for r in object_refs:
        if not isinstance(r, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() expected a list of ObjectRef, got list containing {type(r).__name__}")
    check_timeout(timeout)
    if not object_refs:
        return [], []
    _check_alive(object_refs)
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait.")
    client = _runtime.get_client()
    if any(isinstance(r, ObjectRefGenerator) for r in object_refs):
        return wait_with_generators(client, object_refs, num_returns, timeout)
    if num_returns < 2 or (timeout is not None and timeout < PROGRESS_DELAY_S):  # no bar would show
        return client.wait(object_refs, num_returns, timeout)
    with AutoProgress(object_refs, num_returns, "wait"):
        return client.wait(object_refs, num_returns, timeout)


def _check_alive(refs: Sequence[Any]) -> None:
    """Refs of a session that has ended have no values to wait for: say so at once (rather than
    starting a new cluster that has never heard of them)."""
    for ref in refs:
        owner = ref._client
        if owner is not None and getattr(owner, "closed", False):
            from .exceptions import SessionLostError

            raise SessionLostError(
                f"{ref!r} belongs to a cluster session that has ended ({owner.error_text()}): its value is gone. "
                "Refs don't survive shutdown() or the loss of their cluster; compute the value again.")


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``object_ref``.

    A queued task never runs; a running one gets a KeyboardInterrupt (``force=True``: its worker is
    killed). ``get`` on it then raises :class:`TaskCancelledError`. ``recursive`` also cancels the
    tasks it submitted. Cancelled tasks are not retried.
    """
    if isinstance(object_ref, ObjectRefGenerator):  # as in Ray: cancels the generator's task
        object_ref = object_ref.completed()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expected an ObjectRef, got {type(object_ref).__name__}")
    _runtime.get_client().cancel(object_ref, force, recursive)


_runtime.auto_init_hook = init  # the first .remote()/get()/put() without init() calls init(), as in Ray
