"""Progress bars that tasks and actors update and the driver draws (Ray's ``ray.experimental.tqdm_ray``).

``tqdm(iterable=None, desc=..., total=...)`` has Ray's interface: iterate over it, or call
``update(n)``, ``set_description(desc)``, ``refresh()`` and ``close()``; ``safe_print`` prints without
breaking the bars.

Inside a task, a bar is not drawn there: its state (count, total, description) leaves as one line of
the task's output, prefixed with :data:`MARK`, at most every ``flush_interval_s`` seconds and always
on close or on reaching the total. The driver's output printer hands such lines to :func:`show`,
which draws one tqdm bar per remote bar where a person is looking (a terminal or a notebook, as
:func:`starburst.progress.interactive` decides) and otherwise prints a plain line per update to
stderr. In the driver itself a bar is drawn the same way, directly.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator, TextIO

#: Starts a line of task output that carries a bar's state (JSON) instead of text for a person.
MARK = "__starburst_tqdm__ "
_DEFAULT_FLUSH_S = 1.0
_ids = itertools.count(1)


def _in_task() -> bool:
    from .. import _runtime

    return _runtime.executor_client_factory is not None


class tqdm:  # noqa: N801 - Ray's name
    """A progress bar that may be updated inside a task or an actor and is shown on the driver."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str | None = None, total: int | None = None,
                 unit: str | None = None, position: int | None = None, flush_interval_s: float | None = None) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self._desc = desc or ""
        self._total = total
        self._unit = unit or "it"
        self._position = position
        self._flush_interval_s = _DEFAULT_FLUSH_S if flush_interval_s is None else flush_interval_s
        self._id = f"{os.getpid()}-{next(_ids)}"
        self._x = 0
        self._closed = False
        self._last_flush = float("-inf")
        self._report(force=True)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        self._report(force=True)

    @property
    def n(self) -> int:
        return self._x

    def set_description(self, desc: str) -> None:
        self._desc = desc
        self._report(force=True)

    def update(self, n: int = 1) -> None:
        self._x += n
        self._report(force=self._total is not None and self._x >= self._total)

    def refresh(self) -> None:
        self._report(force=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._report(force=True)

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise ValueError("tqdm_ray.tqdm(...) was given no iterable to iterate over; pass one, or call update()")
        for item in self._iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "tqdm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _state(self) -> dict[str, Any]:
        return {"id": self._id, "desc": self._desc, "x": self._x, "total": self._total, "unit": self._unit,
                "pos": self._position, "closed": self._closed}

    def _report(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self._flush_interval_s:
            return
        self._last_flush = now
        if _in_task():
            # One whole line (print is line-buffered in executors): the driver's printer parses it.
            print(MARK + json.dumps(self._state(), separators=(",", ":")), flush=True)
        else:
            _bars.update(self._state(), label="", stream=sys.stderr)


def safe_print(*args: Any, **kwargs: Any) -> None:
    """``print`` that leaves the driver's bars intact (in a task, a plain ``print``)."""
    if _in_task():
        print(*args, **kwargs)
        return
    import io

    buffer = io.StringIO()
    print(*args, **dict(kwargs, file=buffer))
    stream = kwargs.get("file") or sys.stdout
    _bars.write(stream, buffer.getvalue())


def stderr_sizing(columns: int) -> dict[str, Any]:
    """tqdm's size arguments for stderr: its own size, or ``columns`` x 24 where the terminal reports
    none (some pseudo-terminals: tqdm would draw nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
    except (OSError, ValueError, AttributeError):
        pass
    return {"ncols": columns, "nrows": 24}


class _Bars:
    """The driver's bars, by id; all drawing goes through one lock (output thread and user thread)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._bars: dict[str, Any] = {}
        self._plain_seen: dict[str, tuple[int, int | None, str, bool]] = {}
        self._draw: bool | None = None

    def _drawing(self) -> bool:
        if self._draw is None:
            from ..progress import interactive

            self._draw = interactive()
        return self._draw

    def active(self) -> bool:
        return bool(self._bars)

    def update(self, state: dict[str, Any], label: str, stream: TextIO) -> None:
        with self._lock:
            desc = f"{label}{state.get('desc') or ''}".strip()
            key = f"{label}{state.get('id')}"
            x, total, closed = int(state.get("x") or 0), state.get("total"), bool(state.get("closed"))
            if not self._drawing():
                self._plain(key, desc, x, total, str(state.get("unit") or "it"))
                return
            bar = self._bars.get(key)
            if bar is None:
                if closed and key in self._plain_seen:
                    return
                from tqdm import tqdm as _tqdm

                bar = _tqdm(total=total, desc=desc, unit=str(state.get("unit") or "it"), file=sys.stderr,
                            leave=True, **stderr_sizing(80))
                self._bars[key] = bar
                self._plain_seen[key] = (0, total, desc, False)
            if bar.total != total:
                bar.total = total
            if bar.desc != desc:
                bar.set_description_str(desc, refresh=False)
            bar.update(x - bar.n)
            bar.refresh()
            if closed:
                bar.close()
                del self._bars[key]

    def line(self, key: str, text: str | None, done: bool = False) -> None:
        """A live one-line status (no bar) under ``key``: shown or updated with ``text``; ``done``
        leaves it in place as it reads and ends it (``text`` None: ends it as it was)."""
        with self._lock:
            bar = self._bars.get(key)
            if bar is None and text is not None and not done:
                from tqdm import tqdm as _tqdm

                bar = _tqdm(total=None, desc=text, file=sys.stderr, leave=True, bar_format="{desc}",
                            **stderr_sizing(160))
                self._bars[key] = bar
            if bar is None:
                return
            if text is not None and bar.desc != text:
                bar.set_description_str(text, refresh=True)
            if done:
                bar.close()
                del self._bars[key]

    def _plain(self, key: str, desc: str, x: int, total: int | None, unit: str) -> None:
        seen = (x, total, desc, False)  # a close that adds nothing prints nothing
        if self._plain_seen.get(key) == seen:
            return
        self._plain_seen[key] = seen
        count = f"{x}/{total}" if total is not None else f"{x}"
        try:
            sys.stderr.write(f"{desc}: {count} {unit}\n")
            sys.stderr.flush()
        except (ValueError, OSError):
            pass

    def write(self, stream: TextIO, text: str) -> None:
        """Write ``text`` to ``stream`` above the bars (they are redrawn below it)."""
        with self._lock:
            try:
                if self._bars:
                    from tqdm import tqdm as _tqdm

                    with _tqdm.external_write_mode(file=stream):
                        stream.write(text)
                        stream.flush()
                else:
                    stream.write(text)
                    stream.flush()
            except (ValueError, OSError):  # the stream was closed at interpreter exit
                pass


_bars = _Bars()


def show(label: str, line: str) -> bool:
    """Draw the bar state carried by one line of task output (``label`` says where it ran); False if
    ``line`` is not such a line (it is then ordinary output)."""
    if not line.startswith(MARK):
        return False
    try:
        state = json.loads(line[len(MARK):])
    except ValueError:
        return False
    if not isinstance(state, dict):
        return False
    try:
        _bars.update(state, label=label, stream=sys.stderr)
    except Exception:  # noqa: BLE001 - a bar must never stop the driver's output
        return False
    return True


def active() -> bool:
    """Whether bars are being drawn now (ordinary output must then go through :func:`write`)."""
    return _bars.active()


def write(stream: TextIO, text: str) -> None:
    """Write ordinary output so that the bars being drawn stay intact."""
    _bars.write(stream, text)
