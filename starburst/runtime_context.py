"""``get_runtime_context()`` and the cluster-state calls (``available_resources`` and friends)."""

from __future__ import annotations

from typing import Any

from . import _runtime
from ._proto import starburst_pb2 as pb


class RuntimeContext:
    """What the running code can learn about where and as what it runs (Ray's RuntimeContext)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._task = _runtime.current_task()

    def get_job_id(self) -> str:
        if self._task is not None:
            return self._task.job_id
        w = self._client.welcome
        return w.job_id if w is not None else ""

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    def get_task_id(self) -> str | None:
        """The running task's id (hex); None in the driver."""
        return self._task.task_id.hex() if self._task is not None else None

    def get_actor_id(self) -> str | None:
        """The current actor's id (hex); None outside actors."""
        if self._task is None or not self._task.actor_id:
            return None
        return self._task.actor_id.hex()

    def get_node_id(self) -> str:
        return _runtime.node_id or "driver"

    def get_worker_id(self) -> str:
        import os

        return str(os.getpid())

    @property
    def namespace(self) -> str:
        return _runtime.current_namespace(self._client)

    def get_assigned_resources(self) -> dict[str, float]:
        if self._task is None:
            return {}
        return {"CPU": self._task.cpus} if self._task.cpus else {}

    def is_canceled(self) -> bool:
        """True once ``cancel()`` was called for the running task (it may be checking to stop)."""
        return self._task is not None and self._task.task_id in _runtime.cancelled_tasks

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor that was restarted after its process died (a property, as in Ray)."""
        return _runtime.actor_restarted

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators assigned to this worker, by kind: ``{"GPU": [...]}`` (see :func:`get_gpu_ids`)."""
        return {"GPU": [str(i) for i in get_gpu_ids()]}

    @property
    def current_actor(self) -> Any:
        """A handle to the actor this code runs in (RuntimeError outside actors)."""
        if self._task is None or not self._task.actor_id or _runtime.actor_handle_meta is None:
            raise RuntimeError("current_actor is only available inside an actor's methods")
        from .actor import _rebuild_handle

        return _rebuild_handle(self._task.actor_id, _runtime.actor_handle_meta)

    def get(self) -> dict[str, Any]:
        return {"job_id": self.get_job_id(), "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "node_id": self.get_node_id(), "namespace": self.namespace}


def get_gpu_ids() -> list[int | str]:
    """The GPU ids this worker may use, from ``CUDA_VISIBLE_DEVICES`` (what Ray sets for a task with
    ``num_gpus``); ``[]`` when it is unset, as on starburst's CPU-only workers."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return []
    return [int(d) if d.strip().isdigit() else d.strip() for d in visible.split(",") if d.strip()]


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime.get_client())


def _state() -> pb.ActorReply:
    return _runtime.get_client().request(pb.ActorRequest(cluster_state=True))


def _resources(r: pb.Resources) -> dict[str, float]:
    out = {"CPU": r.cpus}
    if r.gpus:
        out["GPU"] = r.gpus
    if r.memory:
        out["memory"] = r.memory
    out.update(r.custom)
    return out


def cluster_resources() -> dict[str, float]:
    """Total resources of the cluster's nodes."""
    return _resources(_state().total)


def available_resources() -> dict[str, float]:
    """Resources not in use by running tasks right now."""
    return _resources(_state().available)


def nodes() -> list[dict[str, Any]]:
    """One dict per node, with Ray's main keys."""
    out = []
    for n in _state().nodes:
        host, _, _ = n.address.rpartition(":")
        out.append({
            "NodeID": n.node_id, "Alive": True, "NodeManagerAddress": host or n.address,
            "Resources": _resources(n.resources), "alive": True,
        })
    return out
