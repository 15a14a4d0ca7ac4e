"""The head's record of the last task runs, for ``starburst.timeline()`` and the dashboard.

A ring of ``capacity`` runs packed in typed arrays: 25 bytes a run where a tuple of Python objects
took ~250 (100,000 runs: ~2.4 MiB instead of ~25 MiB that the head kept for its life). A run's
length is kept in single precision: its end is off by at most ~1e-7 of the length (4 us for a
minute's run), well below what a timeline shows.
Function names and node ids are stored once each, as indexes into a label table; the table is
rebuilt from the runs still in the ring when it outgrows them (names made per task, such as
``.options(name=f"task-{i}")``, don't pile up).
"""

from __future__ import annotations

from array import array
from typing import Iterator

#: One run: (function name, node id, executor pid, start, end, failed); times are wall clock (s).
Run = tuple[str, str, int, float, float, bool]


class Timeline:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a timeline holds at least one run, not {capacity}")
        self.capacity = capacity
        self._labels: list[str] = []
        self._label_ids: dict[str, int] = {}
        self._name = array("I")
        self._node = array("I")
        self._pid = array("i")  # Linux pids stay below 2**22
        self._start = array("d")
        self._length = array("f")
        self._failed = array("B")
        self._oldest = 0  # where the oldest run is, once the ring is full (the next one goes there)

    def __len__(self) -> int:
        return len(self._start)

    def append(self, name: str, node: str, pid: int, start: float, end: float, failed: bool) -> None:
        """Record a run; the oldest one goes once ``capacity`` are held."""
        ids = self._label_ids
        name_id, node_id = ids.get(name), ids.get(node)
        if name_id is None or node_id is None:
            if len(self._labels) > 4 * self.capacity + 64:  # after compacting: <= 2 * capacity
                self._compact_labels()
            name_id, node_id = self._label(name), self._label(node)
        if len(self._start) < self.capacity:
            self._name.append(name_id)
            self._node.append(node_id)
            self._pid.append(pid)
            self._start.append(start)
            self._length.append(end - start)
            self._failed.append(failed)
            return
        i = self._oldest
        self._name[i], self._node[i], self._pid[i] = name_id, node_id, pid
        self._start[i], self._length[i], self._failed[i] = start, end - start, failed
        self._oldest = (i + 1) % self.capacity

    def __iter__(self) -> Iterator[Run]:
        """The runs held, oldest first."""
        labels, count = self._labels, len(self._start)
        for k in range(count):
            i = (self._oldest + k) % count
            start = self._start[i]
            yield (labels[self._name[i]], labels[self._node[i]], self._pid[i], start, start + self._length[i],
                   bool(self._failed[i]))

    def _label(self, text: str) -> int:
        index = self._label_ids.get(text)
        if index is None:
            index = self._label_ids[text] = len(self._labels)
            self._labels.append(text)
        return index

    def _compact_labels(self) -> None:
        """Keep only the labels runs in the ring still use (each run uses two: name and node)."""
        old = self._labels
        self._labels, self._label_ids = [], {}
        for column in (self._name, self._node):
            for i, label in enumerate(column):
                column[i] = self._label(old[label])
