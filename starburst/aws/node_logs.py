"""A Fargate node's own log (its container's stdout and stderr) from CloudWatch Logs.

ECS's awslogs driver writes each task to ``{log group}/node/node/{task id}`` (stream prefix and
container name are both ``node``); ``starburst logs --node TASK_ID`` prints it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from .launcher import CONTAINER_NAME

STREAM_PREFIX = f"{CONTAINER_NAME}/{CONTAINER_NAME}/"


def find_stream(logs: Any, group: str, task_id: str) -> str:
    """The log stream of the node whose ECS task id (or a unique prefix of it, or its full ARN)
    is ``task_id``; LookupError names the streams there are."""
    task_id = task_id.rsplit("/", 1)[-1]
    streams: list[str] = []
    kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNamePrefix": STREAM_PREFIX + task_id}
    try:
        for page in logs.get_paginator("describe_log_streams").paginate(**kwargs):
            streams += [s["logStreamName"] for s in page["logStreams"]]
    except logs.exceptions.ResourceNotFoundException:
        raise LookupError(f"no log group {group}: run 'starburst setup' first") from None
    if len(streams) == 1:
        return streams[0]
    if streams:
        names = ", ".join(s[len(STREAM_PREFIX):] for s in streams[:5])
        raise LookupError(f"{task_id!r} names {len(streams)} nodes ({names}): give more of the task id")
    recent = logs.describe_log_streams(logGroupName=group, orderBy="LastEventTime", descending=True, limit=5)
    names = ", ".join(s["logStreamName"][len(STREAM_PREFIX):] for s in recent["logStreams"]) or "none"
    raise LookupError(f"no node log for task {task_id!r} in {group} (recent nodes: {names})")


def read(logs: Any, group: str, stream: str, follow: bool = False,
         stop: Callable[[], bool] = lambda: False, poll_s: float = 2.0) -> Iterator[str]:
    """The stream's messages, oldest first; with ``follow``, keep reading new ones until
    ``stop()`` (CloudWatch has no push: this asks every ``poll_s`` seconds)."""
    token = None
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        if token:
            kwargs["nextToken"] = token
        page = logs.get_log_events(**kwargs)
        for event in page["events"]:
            yield event["message"]
        same = page.get("nextForwardToken") == token
        token = page.get("nextForwardToken")
        if same or not page["events"]:
            if not follow or stop():
                return
            time.sleep(poll_s)
