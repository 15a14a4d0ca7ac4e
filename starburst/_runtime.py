"""Process-wide state: the current session with the head, and the task running in this process.

A driver has a session after ``init()`` (or auto-init on first use). An executor process gets one
lazily, relayed through its node, the first time a task uses the API or receives an ObjectRef.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Callable

_lock = threading.RLock()
_client: Any = None
#: Set in executor processes: builds the relayed session on first use.
executor_client_factory: Callable[[], Any] | None = None


class TaskContext:
    """The task running on this thread of an executor."""

    __slots__ = ("task_id", "job_id", "name", "cpus")

    def __init__(self, task_id: bytes, job_id: str, name: str, cpus: float) -> None:
        self.task_id = task_id
        self.job_id = job_id
        self.name = name
        self.cpus = cpus


_task = threading.local()

_id_prefix = os.urandom(8)
_id_counter = itertools.count(1)


def new_id() -> bytes:
    """A 16-byte id unique across processes: random per process, then a counter (no syscall)."""
    global _id_prefix, _id_counter
    if _id_pid[0] != os.getpid():  # forked: a new prefix, or ids would repeat
        _id_pid[0] = os.getpid()
        _id_prefix, _id_counter = os.urandom(8), itertools.count(1)
    return _id_prefix + next(_id_counter).to_bytes(8, "little")


_id_pid = [os.getpid()]

#: env_vars of the runtime_env given to init(): every task of this driver gets them.
job_env_vars: dict[str, str] = {}


def current_task() -> TaskContext | None:
    return getattr(_task, "ctx", None)


def set_current_task(ctx: TaskContext | None) -> None:
    _task.ctx = ctx


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
    from . import api

    api.init()
    return _client


def get_client_for_ref() -> Any:
    """The session that should count a deserialized ObjectRef (None when nothing is running)."""
    client = _client
    if client is not None and not client.closed:
        return client
    if executor_client_factory is not None:
        return get_client()
    return None
