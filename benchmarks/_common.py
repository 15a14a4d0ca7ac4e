"""Helpers shared by bench_core.py and bench_fargate.py.

The scripts are run as ``python benchmarks/bench_<name>.py``, so this directory is ``sys.path[0]``
and they ``import _common`` (their own subprocesses run the same way). Standard library only:
bench_core.py's Ray worker imports this module with the Ray venv's interpreter.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
import traceback


# --------------------------------------------------------------------------
# Statistics (no numpy needed in the orchestrators)
# --------------------------------------------------------------------------
def percentile(values, q):
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values):
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------
# Processes of one run, found by a tag in their environment
# --------------------------------------------------------------------------
def tagged_pids(var, tag):
    """Live (non-zombie) processes whose environment carries ``var=tag``, except this one (Linux /proc)."""
    needle = f"{var}={tag}".encode()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for e in entries:
        if not e.isdigit() or int(e) == os.getpid():
            continue
        try:
            with open(f"/proc/{e}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{e}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != b"Z":
            pids.append(int(e))
    return pids


def timed_shutdown(res, shutdown, catch=Exception):
    """Call ``shutdown()``; put its seconds in ``res["shutdown_s"]`` and, if it raised ``catch``, its
    traceback in ``res["error"]`` (unless an earlier error is there). True if it did not raise."""
    t0 = time.perf_counter()
    ok = True
    try:
        shutdown()
    except catch:
        ok = False
        res.setdefault("error", traceback.format_exc())
    res["shutdown_s"] = time.perf_counter() - t0
    return ok


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def host_line(extra=""):
    """The machine and its load now, for the head of a run's output."""
    return f"host: {platform.node()}  cpus: {os.cpu_count()}  load avg at start: {fmt_loads()}{extra}"


def fmt_loads(loads=None):
    """Load averages as text (``os.getloadavg()`` now, if not given)."""
    return " ".join(f"{x:.2f}" for x in (os.getloadavg() if loads is None else loads))


def fmt_rate(r):
    return "n/a" if r is None or math.isnan(r) else f"{r:,.0f}/s"


def format_table(cols, rows, left=(0,)):
    """A plain-text table: a header, a rule, one line a row; columns ``left`` are left-aligned, the
    others right-aligned (the header is left-aligned throughout)."""
    widths = [max(len(str(r[i])) for r in list(rows) + [cols]) for i in range(len(cols))]
    out = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    for r in rows:
        out.append(" | ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)
