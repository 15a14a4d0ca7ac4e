"""When to burst: how many cloud nodes a hybrid cluster (the laptop's node plus Fargate) should have.

A pure function of a snapshot, so the policy is tested in microseconds and the provider that acts
on it stays thin. One call, walked through::

    decide(Backlog(work_s=600, tasks=200), Capacity(local_cpus=4, cpus_per_node=4, nodes=0,
           max_nodes=20), BurstPolicy(max_wait_s=30, start_s=45))

1. On the laptop alone the backlog drains in 600 / 4 = 150 s.
2. The laptop keeps every task it can finish within the waiting budget: a backlog that drains
   within ``max_wait_s`` never bursts (the Berkeley Starburst rule, USENIX ATC '24: wait for owned
   capacity up to a budget before paying for the cloud).
3. A cloud node joins ``start_s`` after it is asked for. If the laptop alone would be done within
   ``start_s + max_wait_s``, a node would arrive to little or no work: no burst (no paying for
   workers that arrive after the work is done).
4. Otherwise the work left when the nodes arrive, 600 - 4 x 45 = 420 CPU-s, should drain in about
   another ``start_s``: 420 / 45 = 9.3 CPUs, of which the laptop gives 4, so 2 nodes of 4 vCPU.
   Never more nodes than runnable tasks can fill, never outside ``[min_nodes, max_nodes]`` (the
   caller folds the quota into ``max_nodes``; ``max_cost`` is enforced by the launcher).
5. Nodes already there stay while the laptop alone would still miss the waiting budget, and go
   (down to ``min_nodes``) once it wouldn't: scale-down is the same rule read backwards.

``mode="always"`` sizes the cloud to the runnable tasks (the all-cloud behaviour); ``"never"`` keeps
``min_nodes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class Backlog:
    """Runnable work not yet finished, estimated from each function's recent run times."""

    work_s: float  #: CPU-seconds: queued tasks' expected run time plus running tasks' expected remainder
    tasks: int  #: runnable tasks (queued and running)


@dataclass(frozen=True)
class Capacity:
    local_cpus: float  #: CPUs of the laptop's node (0 when it has none)
    cpus_per_node: float  #: vCPUs of one cloud node
    nodes: int  #: cloud nodes launched and not stopped (joined or still starting)
    max_nodes: int  #: workers_max, already clamped by what the quota allows
    min_nodes: int = 0


@dataclass(frozen=True)
class BurstPolicy:
    mode: str = "auto"
    #: The waiting budget: a backlog the laptop finishes within this many seconds stays local.
    max_wait_s: float = 30.0
    #: Expected seconds from RunTask to a joined node (the provider learns it from the run).
    start_s: float = 45.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"burst={self.mode!r}: use one of {', '.join(map(repr, MODES))}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"max_wait={self.max_wait_s!r}: a number of seconds >= 0")
        if not self.start_s > 0:
            raise ValueError(f"start_s={self.start_s!r}: a number of seconds > 0")


@dataclass(frozen=True)
class Decision:
    nodes: int  #: how many cloud nodes the cluster should have now
    reason: str  #: one line for `starburst status`: why


def decide(backlog: Backlog, capacity: Capacity, policy: BurstPolicy) -> Decision:
    """How many cloud nodes to have, and why (see the module docstring)."""
    lo, hi = capacity.min_nodes, max(capacity.min_nodes, capacity.max_nodes)
    per_node = max(capacity.cpus_per_node, 1e-9)
    fill = math.ceil(backlog.tasks / max(1.0, math.floor(per_node)))  # nodes the runnable tasks can fill

    def clamp(n: int) -> int:
        return max(lo, min(hi, n))

    if policy.mode == "never":
        return Decision(lo, "burst='never': cloud nodes only up to workers_min")
    if policy.mode == "always" or capacity.local_cpus <= 0:
        why = "burst='always'" if policy.mode == "always" else "no local CPUs"
        return Decision(clamp(fill), f"{why}: a node per {math.floor(per_node) or 1} runnable task(s)")

    alone_s = backlog.work_s / capacity.local_cpus
    if alone_s <= policy.max_wait_s:
        return Decision(lo, f"the laptop finishes the backlog in ~{alone_s:.0f} s, within max_wait "
                            f"{policy.max_wait_s:g} s")
    if capacity.nodes > 0:  # already bursting, and the laptop alone would still miss the budget
        keep = clamp(max(capacity.nodes, _size(backlog, capacity, policy, fill)))
        return Decision(keep, f"the laptop alone would need ~{alone_s:.0f} s (> max_wait {policy.max_wait_s:g} s)")
    if alone_s <= policy.start_s + policy.max_wait_s:
        return Decision(lo, f"the laptop finishes in ~{alone_s:.0f} s, before cloud nodes could help "
                            f"(they take ~{policy.start_s:.0f} s to start)")
    n = clamp(_size(backlog, capacity, policy, fill))
    return Decision(n, f"the laptop alone would need ~{alone_s:.0f} s (> max_wait {policy.max_wait_s:g} s "
                       f"+ start {policy.start_s:.0f} s): {n} node(s) drain it in ~{policy.start_s:.0f} s more")


def _size(backlog: Backlog, capacity: Capacity, policy: BurstPolicy, fill: int) -> int:
    """Nodes that, arriving after ``start_s``, drain what is left in about another ``start_s``."""
    left = max(0.0, backlog.work_s - capacity.local_cpus * policy.start_s)
    cloud_cpus = left / policy.start_s - capacity.local_cpus
    return min(fill, max(0, math.ceil(cloud_cpus / capacity.cpus_per_node - 1e-9)))


#: A function's run time before any of its tasks has finished, when no other function's is known.
DEFAULT_TASK_S = 1.0
#: Weight of the newest node start time in the learned ``start_s`` (a moving average).
START_WEIGHT = 0.3


def estimate_backlog(queued: Sequence[Optional[float]], running: Sequence[Optional[float]],
                     default_s: float = DEFAULT_TASK_S) -> Backlog:
    """The backlog from runnable tasks' functions' recent run times (``Scheduler.backlog()``):
    a queued task counts its function's run time, a running one half of it (its expected remainder
    when it is anywhere in its run). A function not timed yet counts as the mean of those that
    are, or ``default_s`` when none is."""
    known = [d for d in (*queued, *running) if d is not None]
    guess = sum(known) / len(known) if known else default_s
    work = sum(guess if d is None else d for d in queued)
    work += sum(guess if d is None else d for d in running) / 2
    return Backlog(work_s=work, tasks=len(queued) + len(running))


def learn_start(previous: float, sample: float) -> float:
    """The expected node start time after one more node took ``sample`` seconds from launch to joined."""
    return (1 - START_WEIGHT) * previous + START_WEIGHT * sample
