"""``starburst.util`` (``ray.util`` under the Ray alias): helpers built on the public task and actor API.

- :class:`ActorPool` (``starburst.util.actor_pool``): spread work over a fixed set of actors.
- :func:`as_completed` / :func:`map_unordered` (``starburst.util.helpers``): consume results in the
  order they finish, with backpressure.
- ``starburst.util.queue``: :class:`~starburst.util.queue.Queue`, a FIFO queue held by an async actor,
  shareable between the driver, tasks and actors.
- ``starburst.util.multiprocessing``: :class:`~starburst.util.multiprocessing.Pool`, a drop-in for
  ``multiprocessing.Pool`` whose worker processes are actors.

The submodules ``queue`` and ``multiprocessing`` are imported on first use, as in Ray.
"""

from __future__ import annotations

from typing import Any

from .actor_pool import ActorPool
from .helpers import as_completed, map_unordered

__all__ = ["ActorPool", "as_completed", "map_unordered", "get_node_ip_address", "inspect_serializability"]


def get_node_ip_address() -> str:
    """The address of the node this runs on, as Ray's ``ray.util.get_node_ip_address``: loopback on
    the local cluster, the machine's own address on a Fargate node (whose STARBURST_HOST is the
    0.0.0.0 it listens on, not an address)."""
    import os
    import socket

    host = os.environ.get("STARBURST_HOST", "")
    if host and host != "0.0.0.0":
        return host
    if not os.environ.get("STARBURST_TLS_BUNDLE"):  # not a Fargate node: this machine's cluster
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def inspect_serializability(obj: Any, name: str | None = None, **_: Any) -> tuple[bool, set]:
    """``(True, set())`` if ``obj`` can be sent to a worker, else ``(False, {reason})`` (the reason
    cloudpickle gave), printing it, like Ray's helper of that name."""
    from ..serialization import find_unpicklable

    problem = find_unpicklable(obj)
    if problem is None:
        return True, set()
    print(f"{name or type(obj).__name__} is not serializable: {problem}")
    return False, {problem}


_UNSUPPORTED = {
    "placement_group": "placement groups", "remove_placement_group": "placement groups",
    "get_placement_group": "placement groups", "placement_group_table": "placement groups",
    "get_current_placement_group": "placement groups", "list_named_actors": "listing named actors",
    "register_serializer": "custom serializers", "deregister_serializer": "custom serializers",
    "pdb": "the Ray debugger", "collective": "Ray collective communication",
}


def __getattr__(name: str) -> Any:
    if name in _UNSUPPORTED:
        raise AttributeError(f"module 'ray.util' (starburst.util) has no attribute {name!r}: "
                             f"starburst does not support {_UNSUPPORTED[name]}")
    raise AttributeError(f"module 'starburst.util' has no attribute {name!r}")
