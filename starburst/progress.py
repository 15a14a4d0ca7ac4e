"""Progress bars for long waits (tqdm).

- :func:`progress` is the explicit helper: ``for ref in starburst.progress(refs): ...`` yields the
  refs as their tasks finish, with a bar.
- ``get``/``wait`` over several refs show a bar by themselves once they have waited ``DELAY_S``
  (2 s), but only where a person is looking: a terminal (stdout and stderr both TTYs) or a notebook.
  Never in a non-interactive run; off with ``init(progress=False)`` or ``STARBURST_PROGRESS=0``.

``progress()`` follows arrivals (it blocks in ``wait``); the automatic bar looks at the refs the
call waits for four times a second (lookups in the session's table, no locks, no messages), so it
never slows the call it decorates and goes away as soon as the call returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    from .object_ref import ObjectRef

#: Seconds a get/wait runs before its bar appears.
DELAY_S = float(os.environ.get("STARBURST_PROGRESS_DELAY") or 2.0)
#: Set by ``init(progress=...)``; None: decided by the environment.
enabled: bool | None = None


def configure_progress(enable: bool | None) -> None:
    """``init(progress=...)``: True/False forces bars on/off; None leaves it to the environment."""
    global enabled
    enabled = enable


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def interactive() -> bool:
    """Whether automatic bars may be shown: not switched off, and someone is watching."""
    if enabled is False or os.environ.get("STARBURST_PROGRESS", "").lower() in ("0", "false", "no", "off"):
        return False
    from . import _runtime

    if _runtime.executor_client_factory is not None:
        return False  # inside a task: its output goes to a log, not a person
    if _in_notebook():
        return True
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


#: tqdm's own time fields are replaced by the postfix (see ``_show``): one duration format everywhere.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"  # tqdm puts ", " before a postfix


def _show(bar: Any, added: int, started: float) -> None:
    """Advance ``bar`` by ``added`` and show the time since ``started`` and the rate."""
    from .aws.pricing import format_duration

    elapsed = time.monotonic() - started
    rate = (bar.n + added) / elapsed if elapsed > 0 else 0.0
    bar.set_postfix_str(f"{format_duration(elapsed)}, {rate:.1f} tasks/s", refresh=False)
    bar.update(added)


def format_cluster(state: dict) -> str:
    """The one-line state of a Fargate cluster (from the dashboard's snapshot): workers joined and
    starting, $/hour, cost so far, budget left; "" for the local cluster."""
    from .aws.pricing import format_cost

    c = state.get("cluster") or {}
    if c.get("provider") != "fargate":
        return ""
    low, high = c.get("workers") or (0, 0)
    starting = f", {c['nodes_pending']} starting" if c.get("nodes_pending") else ""
    size = f"{low}-{high}" if low != high else f"{high}"
    parts = [f"workers {len(state.get('nodes', []))} joined{starting} (of {size})",
             f"{format_cost(c.get('cost_per_hour') or 0.0)}/h", f"{format_cost(c.get('cost_usd') or 0.0)} so far"]
    if c.get("max_cost"):
        parts.append(f"{format_cost(c.get('budget_left') or 0.0)} left")
    return ", ".join(parts)


def cluster_line(dashboard_url: str, timeout: float = 1.0) -> str:
    """:func:`format_cluster` of the head behind ``dashboard_url`` ("" if it can't be read)."""
    import json
    import urllib.request

    base, _, query = dashboard_url.partition("?")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(f"{base.rstrip('/')}/api/state?{query}", timeout=timeout) as response:
            return format_cluster(json.load(response))
    except (OSError, ValueError):
        return ""


def _bar(total: int, desc: str, initial: int = 0):
    if _in_notebook():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    from .experimental.tqdm_ray import stderr_sizing

    return tqdm(total=total, initial=initial, desc=desc, unit="task", file=sys.stderr, leave=True,
                bar_format=BAR_FORMAT, **stderr_sizing(80))


def _ready_now(client, refs: list["ObjectRef"]) -> tuple[list["ObjectRef"], list["ObjectRef"]]:
    return client.wait(refs, len(refs), 0)


def progress(refs: Sequence["ObjectRef"], *, desc: str = "tasks") -> Iterator["ObjectRef"]:
    """Yield ``refs`` as their values become ready (in completion order), drawing a bar.

    ``for ref in starburst.progress(refs): use(starburst.get(ref))``. The bar is drawn wherever
    stderr goes, interactive or not (it is asked for)."""
    from . import _runtime

    client = _runtime.get_client()
    pending = list(dict.fromkeys(refs))
    started = time.monotonic()
    with _bar(len(pending), desc) as bar:
        while pending:
            ready, pending = client.wait(pending, 1, None)  # blocks until one more is done
            if pending:
                more, pending = _ready_now(client, pending)
                ready += more
            _show(bar, len(ready), started)
            yield from ready


class AutoProgress:
    """The bar a long ``get``/``wait`` shows by itself (see the module's docstring). Use as a
    context manager around the blocking call; costs nothing when no bar is wanted."""

    def __init__(self, refs: Sequence[Any], needed: int, desc: str) -> None:
        self.refs = list(dict.fromkeys(refs))
        self.needed = min(needed, len(self.refs))
        self.desc = desc
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> "AutoProgress":
        if self.needed >= 2 and interactive():
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="starburst-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()

    def _run(self) -> None:
        from . import _runtime

        if self._done.wait(DELAY_S):
            return
        client = _runtime.peek_client()
        if client is None:
            return
        try:
            from .api import dashboard_url

            url = dashboard_url(getattr(getattr(client, "transport", None), "address", None))
            fargate = bool(url and cluster_line(url))  # the local cluster has no line to show
            shown = 0.0
            pending = [r._id for r in self.refs]
            finishing = False
            with _bar(self.needed, self.desc) as bar:
                while True:
                    still = [i for i in pending if not client.has_value(i)]
                    added = min(len(pending) - len(still), self.needed - bar.n)
                    pending = still
                    if added:
                        _show(bar, added, self._started)
                    if finishing or bar.n >= self.needed or not pending:
                        break
                    if fargate and time.monotonic() - shown >= 1.0:  # launches, joins, cost: live
                        shown = time.monotonic()
                        line = cluster_line(url)
                        bar.set_description_str(f"{self.desc} [{line}]" if line else self.desc)
                    finishing = self._done.wait(0.25)  # the call is over: one last look, then go
        except Exception:  # noqa: BLE001 - a progress bar must never break the get it decorates
            return


def format_launch(c: Any) -> str:
    """One line for a Fargate cluster whose workers are on their way (a ``ClusterStatus``): workers
    requested / provisioning / pulling / joined, $/hour, cost so far, budget left."""
    from .aws.pricing import format_cost

    joined = max(0, c.nodes_requested - c.nodes_pending)
    starting = max(0, c.nodes_pending - c.nodes_provisioning - c.nodes_pulling)
    workers = [f"{c.nodes_requested} requested", f"{c.nodes_provisioning} provisioning", f"{c.nodes_pulling} pulling"]
    if starting:
        workers.append(f"{starting} starting")
    workers.append(f"{joined} joined")
    parts = [f"Fargate workers: {', '.join(workers)}", f"{format_cost(c.cost_per_hour)}/h",
             f"{format_cost(c.cost_usd)} so far"]
    if c.max_cost:
        parts.append(f"{format_cost(max(0.0, c.max_cost - c.cost_usd))} of {format_cost(c.max_cost)} left")
    return " | ".join(parts)


#: How often the launch line asks the head for its cluster's state.
LAUNCH_POLL_S = float(os.environ.get("STARBURST_LAUNCH_POLL_S") or 1.0)


class LaunchWatch:
    """While a Fargate cluster's workers are launched and join (at ``init`` and at each scale-up), one
    live line on stderr says how far they are (:func:`format_launch`); it ends, left in place with
    the final counts, once every requested worker has joined. Only where :func:`interactive` says
    someone is watching; task output is printed above it."""

    def __init__(self, head_address: str, client: Any) -> None:
        self.head_address = head_address
        self.client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="starburst-launch-line", daemon=True)

    def start(self) -> "LaunchWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _status(self, stub: Any, metadata: Any) -> Any:
        import grpc

        from ._proto import starburst_pb2 as pb

        try:
            return stub.Status(pb.StatusRequest(), timeout=5, metadata=metadata).cluster
        except grpc.RpcError:
            return None

    def _run(self) -> None:
        import grpc

        from . import _auth
        from ._proto import starburst_pb2_grpc as pb_grpc
        from .experimental.tqdm_ray import _bars

        key = f"launch-{id(self)}"
        showing = False
        try:
            target, token = _auth.parse_address(self.head_address)
            with grpc.insecure_channel(target) as channel:
                stub, metadata = pb_grpc.HeadStub(channel), _auth.call_metadata(token)
                while not self._stop.is_set() and not self.client.closed:
                    c = self._status(stub, metadata)
                    if c is not None and c.provider != "fargate":
                        return  # the local cluster has nothing to launch
                    if c is not None and (c.nodes_pending > 0 or showing):
                        _bars.line(key, format_launch(c), done=c.nodes_pending == 0)
                        showing = c.nodes_pending > 0
                    self._stop.wait(LAUNCH_POLL_S)
        except Exception:  # noqa: BLE001 - a status line must never break the session
            pass
        finally:
            if showing:
                _bars.line(key, None, done=True)


_launch_watch: LaunchWatch | None = None


def watch_launches(head_address: str, client: Any) -> None:
    """``init()``: show the live launch line for this session's cluster if someone is watching."""
    global _launch_watch
    stop_launch_watch()
    if interactive():
        _launch_watch = LaunchWatch(head_address, client).start()


def stop_launch_watch() -> None:
    """``shutdown()``: end the launch line (left as it last read)."""
    global _launch_watch
    watch, _launch_watch = _launch_watch, None
    if watch is not None:
        watch.stop()
