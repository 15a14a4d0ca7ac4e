"""Each job's task output, kept by the head so that ``starburst logs`` can show it after the fact.

Layout: ``$STARBURST_HOME/logs/jobs/<job id>/output.jsonl`` (directories 0700, files 0600), one
JSON record per line: ``{"t": unix time, "k": "out" | "err" | "error", "task": name, "pid": N,
"node": address, "text": "..."}``. ``k == "error"`` records are tasks that failed for good, with
their remote traceback. A job's directory and file are created with its first output, never
empty.

Bounds and retention (the rule ``starburst logs --help`` states):

- a job's output file is rotated at ``STARBURST_JOB_LOG_BYTES`` (default 8 MiB) to
  ``output.1.jsonl``, replacing the previous one: at most twice that per job;
- a job's logs are removed ``STARBURST_LOG_RETENTION_DAYS`` (default 7) days after their last
  output, and beyond the ``STARBURST_LOG_MAX_JOBS`` (default 50) most recently written jobs.
  The head applies the rule when it starts and whenever a new job writes its first line.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import time
from collections import OrderedDict
from typing import IO, Callable, Iterator

from .. import config

OUTPUT = "output.jsonl"
ROTATED = "output.1.jsonl"
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


RETENTION_HELP = ("Retention: a job's output is rotated at 8 MiB (two files kept, "
                  "STARBURST_JOB_LOG_BYTES); a job's logs are removed 7 days after their last line "
                  "(STARBURST_LOG_RETENTION_DAYS) and beyond the 50 most recent jobs (STARBURST_LOG_MAX_JOBS).")


def max_bytes() -> int:
    return int(os.environ.get("STARBURST_JOB_LOG_BYTES") or 8 << 20)


def retention_days() -> float:
    return float(os.environ.get("STARBURST_LOG_RETENTION_DAYS") or 7)


def max_jobs() -> int:
    return int(os.environ.get("STARBURST_LOG_MAX_JOBS") or 50)


def jobs_dir(create: bool = False) -> pathlib.Path:
    """``$STARBURST_HOME/logs/jobs`` (made owner-only when ``create``)."""
    path = config.home() / "logs" / "jobs"
    return config.private_dir(path) if create else path


def prune(now: float | None = None) -> list[str]:
    """Apply the retention rule; returns the job ids removed."""
    now = time.time() if now is None else now
    cutoff = now - retention_days() * 86400
    removed = []
    for i, (job_id, mtime) in enumerate(list_jobs()):
        if i >= max_jobs() or mtime < cutoff:
            shutil.rmtree(jobs_dir() / job_id, ignore_errors=True)
            removed.append(job_id)
    return removed


def _last_write(job_dir: pathlib.Path) -> float:
    times = [p.stat().st_mtime for p in job_dir.iterdir() if p.is_file()]
    return max(times) if times else job_dir.stat().st_mtime


class JobLogs:
    """The head's writer: appends records to each job's file (kept open, a few at a time)."""

    OPEN_FILES = 16

    def __init__(self) -> None:
        #: job id -> (its open file, bytes in it); records are buffered until ``flush``
        self._files: OrderedDict[str, list] = OrderedDict()
        self._max_bytes = max_bytes()
        prune()

    def write(self, job_id: str, kind: str, task: str, pid: int, node: str, text: str) -> None:
        entry = self._files.get(job_id) or self._open(job_id)
        if entry is None:
            return
        self._files.move_to_end(job_id)
        record = json.dumps({"t": round(time.time(), 3), "k": kind, "task": task, "pid": pid, "node": node,
                             "text": text}, ensure_ascii=False) + "\n"
        entry[0].write(record)
        entry[1] += len(record.encode("utf-8")) if not record.isascii() else len(record)
        if entry[1] >= self._max_bytes:
            self._rotate(job_id)

    def flush(self) -> None:
        """Put what was written on disk (the head calls it once per batch it handles)."""
        for f, _ in self._files.values():
            f.flush()

    def _open(self, job_id: str) -> list | None:
        if not job_id or not _JOB_ID.match(job_id):
            return None
        job_dir = jobs_dir(create=True) / job_id
        new_job = not job_dir.exists()
        config.private_dir(job_dir)
        fd = os.open(job_dir / OUTPUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        entry = self._files[job_id] = [os.fdopen(fd, "a", encoding="utf-8"), os.fstat(fd).st_size]
        while len(self._files) > self.OPEN_FILES:
            _, (old, _size) = self._files.popitem(last=False)
            old.close()
        if new_job:
            prune()
        return entry

    def _rotate(self, job_id: str) -> None:
        self._files.pop(job_id)[0].close()
        job_dir = jobs_dir() / job_id
        os.replace(job_dir / OUTPUT, job_dir / ROTATED)

    def close(self) -> None:
        for f, _ in self._files.values():
            f.close()
        self._files.clear()


# ---------------------------------------------------------------------------------------- reading

def list_jobs() -> list[tuple[str, float]]:
    """(job id, time of its last output), most recent first."""
    root = jobs_dir()
    if not root.is_dir():
        return []
    jobs = []
    for d in root.iterdir():
        if d.is_dir():
            try:
                jobs.append((d.name, _last_write(d)))
            except OSError:
                continue
    return sorted(jobs, key=lambda j: j[1], reverse=True)


def find_job(prefix: str | None) -> str:
    """The job named by ``prefix`` (a unique prefix of its id), or the latest job when None.
    Raises LookupError saying what exists."""
    jobs = list_jobs()
    if not jobs:
        raise LookupError(f"no job has written any output yet (logs live in {jobs_dir()})")
    if not prefix:
        return jobs[0][0]
    matches = [j for j, _ in jobs if j == prefix] or [j for j, _ in jobs if j.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    recent = ", ".join(j for j, _ in jobs[:5])
    if not matches:
        raise LookupError(f"no job {prefix!r}; recent jobs: {recent}")
    raise LookupError(f"{prefix!r} names {len(matches)} jobs ({', '.join(matches[:5])}): give more of the id")


def read(job_id: str) -> Iterator[dict]:
    """Every record the job has kept, oldest first (the rotated file, then the current one)."""
    job_dir = jobs_dir() / job_id
    yield from _read_file(job_dir / ROTATED)
    yield from _read_file(job_dir / OUTPUT)


def _records(f: IO[str]) -> Iterator[dict]:
    for line in f:
        if not line.endswith("\n"):
            return  # a line still being written
        try:
            yield json.loads(line)
        except ValueError:
            continue


def follow(job_id: str, stop: Callable[[], bool], poll_s: float = 0.25) -> Iterator[dict]:
    """Like :func:`read`, then keep yielding new records as they are written until ``stop()``
    is true and nothing more arrives (the file may be rotated meanwhile)."""
    job_dir = jobs_dir() / job_id
    yield from _read_file(job_dir / ROTATED)
    path = job_dir / OUTPUT
    pos = 0
    inode = None
    while True:
        got = False
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            if inode is not None and st.st_ino != inode:
                pos = 0  # rotated: the new file starts from the beginning
            inode = st.st_ino
            with open(path, encoding="utf-8") as f:
                f.seek(pos)
                while True:
                    line = f.readline()
                    if not line.endswith("\n"):
                        break
                    pos = f.tell()
                    got = True
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        if not got:
            if stop():
                return
            time.sleep(poll_s)


def _read_file(path: pathlib.Path) -> Iterator[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            yield from _records(f)
    except FileNotFoundError:
        return


def format_record(r: dict) -> str:
    """One record as the driver printed it: ``(task pid=N[, node=X]) text`` per line."""
    if r.get("k") == "error":
        return f"ERROR in {r.get('task')}:\n{r.get('text', '').rstrip()}\n"
    where = f"pid={r.get('pid')}" + (f", node={r['node']}" if r.get("node") else "")
    prefix = f"({r.get('task')} {where}) "
    return "".join(prefix + line + "\n" for line in r.get("text", "").splitlines())
