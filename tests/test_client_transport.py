"""The driver's Client over a scripted transport (no head process): orderings that a real head
produces only now and then, made to happen every time."""

from __future__ import annotations

from starburst._ids import item_id, new_id, return_ids
from starburst._proto import starburst_pb2 as pb
from starburst.driver.client import Client
from starburst.remote_function import shape_result
from starburst.serialization import serialize


class EagerHead:
    """A transport whose head answers inside ``wake()``: the welcome, and for a streaming task its
    first item, before ``submit`` has returned to ``.remote()`` (a fast generator on an idle
    cluster can get there first)."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.client: Client | None = None

    def start(self, client: Client) -> None:
        self.client = client

    def wake(self) -> None:
        assert self.client is not None
        replies = []
        for op in self.client.take_outbox():
            kind = op.WhichOneof("op")
            if kind == "hello":
                replies.append(pb.HeadOp(welcome=pb.Welcome(job_id="job-1", store_url=self.store_url)))
            elif kind == "submit" and op.submit.generator == "streaming":
                value = pb.Value(inline=serialize("first").to_bytes())
                replies.append(pb.HeadOp(ready=pb.Object(id=item_id(op.submit.task_id, 0), value=value)))
        if replies:
            self.client.on_message(pb.HeadMsg(ops=replies))

    def close(self) -> None:
        pass


def test_a_streaming_item_that_arrives_before_remote_returns_is_kept(tmp_path):
    client = Client(EagerHead(f"file://{tmp_path}"))
    task_id = new_id()
    spec = pb.TaskSpec(task_id=task_id, name="numbers", generator="streaming", return_ids=return_ids(task_id, 1))
    generator = shape_result(client.submit(spec, None), "streaming", task_id, client)
    ref = generator._next_sync(5)  # (it was released as unwanted: no item came, ever)
    assert not ref.is_nil(), "the item that came before .remote() returned was lost"
    assert client.get([ref], 5) == ["first"]
