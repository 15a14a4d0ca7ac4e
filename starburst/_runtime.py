"""Process-wide state: the current session with the head, and the task running in this process.

A driver has a session after ``init()`` (or auto-init on first use). An executor process gets one
lazily, relayed through its node, the first time a task uses the API or receives an ObjectRef.
"""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Any, Callable

from . import _ids
from .exceptions import RaySystemError

_lock = threading.RLock()
_client: Any = None
#: Set in executor processes: builds the relayed session on first use.
executor_client_factory: Callable[[], Any] | None = None


class TaskContext:
    """The task running on this thread of an executor."""

    __slots__ = ("task_id", "job_id", "name", "cpus", "namespace", "actor_id")

    def __init__(self, task_id: bytes, job_id: str, name: str, cpus: float, namespace: str = "",
                 actor_id: bytes = b"") -> None:
        self.task_id = task_id
        self.job_id = job_id
        self.name = name
        self.cpus = cpus
        self.namespace = namespace
        self.actor_id = actor_id


os.register_at_fork(after_in_child=_ids.reseed)  # a forked child must not repeat our ids

#: Set in executor processes.
node_id = ""
actor_restarted = False
actor_handle_meta: bytes | None = None
cancelled_tasks: set[bytes] = set()  # cancel requests received for tasks running here

#: The runtime_env given to init() (validated): every task and actor of this driver gets it.
job_runtime_env: dict = {}


_task_var: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("starburst_task", default=None)


def current_task() -> TaskContext | None:
    """The task running here: per thread, and per coroutine on an async actor's loop."""
    return _task_var.get()


def set_current_task(ctx: TaskContext | None):
    return _task_var.set(ctx)


def current_namespace(client: Any) -> str:
    """The namespace for named actors: the running task's, else the driver's."""
    ctx = current_task()
    if ctx is not None and ctx.namespace:
        return ctx.namespace
    return getattr(client, "namespace", "") or ""


def stamp_caller(spec: Any, client: Any) -> None:
    """Record on a TaskSpec who submits it: the running task (parent, job) and the namespace."""
    ctx = current_task()
    if ctx is not None:
        spec.parent_task_id = ctx.task_id
        spec.job_id = ctx.job_id
    if not spec.namespace:
        spec.namespace = ctx.namespace if ctx is not None and ctx.namespace else getattr(client, "namespace", "") or ""


#: How get_client() starts or joins a cluster on first use: ``api.init``, set when the public API
#: is imported (this module sits below the API and doesn't import it).
auto_init_hook: Callable[[], Any] | None = None


def peek_client() -> Any:
    return _client


def set_client(client: Any) -> None:
    global _client
    with _lock:
        _client = client


def get_client(auto_init: bool = True) -> Any:
    """The session to use for an API call; starts or joins a cluster on first use (Ray's auto-init)."""
    client = _client
    if client is not None and not client.closed:
        return client
    with _lock:
        if _client is not None and not _client.closed:
            return _client
        if executor_client_factory is not None:
            set_client(executor_client_factory())
            return _client
        if not auto_init:
            raise RuntimeError("starburst is not initialized: call starburst.init() first")
        if _client is not None and _client.closed:
            # The session broke without shutdown(): starting another cluster quietly would leave
            # every ObjectRef of the old one dangling.
            raise RaySystemError(
                f"the session with the starburst cluster was lost ({_client.error_text()}); its objects "
                "and tasks are gone. Call starburst.shutdown() and then starburst.init() to start over."
            )
    if auto_init_hook is None:
        import importlib

        importlib.import_module("starburst.api")  # (imported on first use of the API: it sets the hook)
    if auto_init_hook is None:
        raise RuntimeError("starburst is not initialized: call starburst.init() first")
    auto_init_hook()
    return _client


def get_client_for_ref() -> Any:
    """The session that should count a deserialized ObjectRef (None when nothing is running)."""
    client = _client
    if client is not None and not client.closed:
        return client
    if executor_client_factory is not None:
        return get_client()
    return None
