"""An executor's last words: where a fatal error's report (faulthandler) goes, beside the node's
socket; the executor writes it, the node reads it when the executor dies."""

from __future__ import annotations

import os


def crash_report_path(socket_path: str, executor_id: int) -> str:
    return os.path.join(os.path.dirname(socket_path), f"executor-{executor_id}.crash")


def read_crash_report(socket_path: str, executor_id: int) -> list[str]:
    """The fatal-error report a dead executor left (its lines; [] if none), removing the file."""
    path = crash_report_path(socket_path, executor_id)
    try:
        with open(path, errors="replace") as f:
            text = f.read(8192)
        os.unlink(path)
    except OSError:
        return []
    return text.splitlines()
