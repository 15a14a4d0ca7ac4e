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

from .actor_pool import ActorPool
from .helpers import as_completed, map_unordered

__all__ = ["ActorPool", "as_completed", "map_unordered"]
