"""Streaming generators are retried per max_retries like Ray: a retry runs the generator again from
the start and the items an earlier attempt delivered are not delivered again."""

from __future__ import annotations

import os

import pytest

from starburst._proto import starburst_pb2 as pb
from starburst.generators import item_id

from test_scheduler_unit import Harness


def test_a_retried_streaming_task_skips_the_items_already_delivered():
    h = Harness()
    node = h.add_node("a", 1)
    spec = h.spec(max_retries=1)
    spec.generator = "streaming"
    (task,) = h.submit(spec)
    assert h.runs("a") == [task]
    items = [pb.NodeToHeadOp(stream_item=pb.Object(id=item_id(task, i), value=pb.Value(inline=b"%d" % i)))
             for i in range(3)]
    h.step(items[:2], node)
    h.done(node, task, failure=pb.TaskDone.WORKER_DIED)
    (rerun,) = [op.run for op in h.sent["a"] if op.WhichOneof("op") == "run"]
    assert rerun.spec.attempt == 1 and rerun.spec.stream_skip == 2  # the executor sends from item 2 on
    assert item_id(task, 0) in h.s.objects
    h.step([pb.ClientOp(release=item_id(task, 0))])  # the consumer took item 0 and let it go
    h.step(items, node)  # even if a retry sends them again, the head delivers only the new one
    assert item_id(task, 0) not in h.s.objects
    assert h.s.tasks[task].streamed == 3


def test_a_generator_whose_worker_dies_mid_stream_is_retried_and_each_item_arrives_once(cluster, tmp_path):
    marker = str(tmp_path / "died-once")

    @cluster.remote(max_retries=2)
    def numbers(n, k, marker):
        for i in range(n):
            if i == k and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker dies after k items, on the first attempt only
            yield i

    got = [cluster.get(ref) for ref in numbers.remote(8, 3, marker)]
    assert os.path.exists(marker)
    assert got == list(range(8))


def test_without_retries_a_generator_whose_worker_dies_ends_with_the_error(cluster, tmp_path):
    from starburst.exceptions import WorkerCrashedError

    marker, go = str(tmp_path / "died"), str(tmp_path / "go")

    @cluster.remote(max_retries=0)
    def numbers(marker, go):
        import time

        yield 0
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)  # die only once the consumer has item 0 (an exit may outrun its sending)
        open(marker, "w").close()
        os._exit(1)

    refs = iter(numbers.remote(marker, go))
    assert cluster.get(next(refs)) == 0
    open(go, "w").close()
    with pytest.raises(WorkerCrashedError):
        cluster.get(next(refs))
