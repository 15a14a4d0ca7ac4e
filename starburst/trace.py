"""``starburst.timeline()``: the tasks the cluster ran, as a Chrome trace (Ray's ``ray.timeline``)."""

from __future__ import annotations

import os
from typing import Any


def timeline(filename: str | os.PathLike | None = None) -> list[dict[str, Any]] | None:
    """The head's record of finished task runs (the last 100,000) as Chrome trace events: one
    complete event per run with its start and end, a process per node, a thread per executor
    process, and ``args`` naming the node, executor pid and function. Open the file in
    ``chrome://tracing`` or https://ui.perfetto.dev.

    With ``filename``, writes ``{"traceEvents": [...]}`` there and returns None; without it,
    returns the list of events."""
    import json
    import urllib.request

    from . import _runtime
    from .api import dashboard_url

    client = _runtime.get_client()
    address = getattr(getattr(client, "transport", None), "address", None)
    url = dashboard_url(address)
    if not url:
        raise RuntimeError("timeline() reads the head's dashboard, and this session's head has none "
                           "recorded in STARBURST_HOME/head.json (a head on another machine?)")
    base, _, query = url.partition("?")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    with opener.open(f"{base.rstrip('/')}/api/timeline?{query}", timeout=30) as response:
        trace = json.load(response)
    if filename is None:
        return trace["traceEvents"]
    with open(filename, "w", encoding="utf-8") as f:
        json.dump(trace, f)
    return None
