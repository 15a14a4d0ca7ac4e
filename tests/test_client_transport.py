"""The driver's Client over a scripted transport (no head process): orderings that a real head
produces only now and then, made to happen every time."""

from __future__ import annotations

import pytest

from starburst._ids import item_id, new_id, return_ids
from starburst._proto import starburst_pb2 as pb
from starburst.driver.client import Client
from starburst.remote_function import shape_result
from starburst.serialization import serialize

from conftest import wait_for


class EagerHead:
    """A transport whose head answers inside ``wake()``: the welcome, and for a streaming task its
    first item, before ``submit`` has returned to ``.remote()`` (a fast generator on an idle
    cluster can get there first)."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.client: Client | None = None
        self.sent: list[pb.ClientOp] = []  # every operation the client sent, in order
        self.eager = True  # False: nothing leaves until the test calls flush()

    def start(self, client: Client) -> None:
        self.client = client

    def wake(self) -> None:
        if not self.eager:
            return  # the test flushes
        self.flush()

    def flush(self) -> None:
        assert self.client is not None
        replies = []
        for op in self.client.take_outbox():
            self.sent.append(op)
            kind = op.WhichOneof("op")
            if kind == "hello":
                replies.append(pb.HeadOp(welcome=pb.Welcome(job_id="job-1", store_url=self.store_url)))
            elif kind == "submit" and op.submit.generator == "streaming":
                value = pb.Value(inline=serialize("first").to_bytes())
                replies.append(pb.HeadOp(ready=pb.Object(id=item_id(op.submit.task_id, 0), value=value)))
        if replies:
            self.client.on_message(pb.HeadMsg(ops=replies))

    wake_soon = send_now = wake

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


class Owner:
    """Stands for a RemoteFunction: the object whose life keeps its function at the head."""


def test_a_function_stays_at_the_head_while_an_owner_lives_even_at_a_reused_id(tmp_path):
    """An owner collected and a new one made at the same address (CPython reuses it at once): the
    new one must count, or the head is told to drop the function while the new owner still names
    it ('function of task ... was never sent')."""
    import gc

    head = EagerHead(f"file://{tmp_path}")
    client = Client(head)
    head.eager = False  # the collected owner's release is handled after the new owner counted
    function = pb.Function(id=b"f" * 32, pickled=b"x", name="f")
    owner = Owner()
    client.send_function(function, owner)
    for _ in range(100):  # until a new owner lands on the old one's address
        old = id(owner)
        del owner  # (collected at once: nothing else to free it)
        owner = Owner()
        client.send_function(function, owner)
        if id(owner) == old:
            break
    else:
        raise AssertionError("no address was reused in 100 tries: this test can't tell anything here")
    head.flush()  # the collected owners' releases are handled now
    assert not [op for op in head.sent if op.WhichOneof("op") == "release_function"], \
        "the function was released while an owner of it lives"
    del owner
    gc.collect()
    head.flush()
    assert head.sent[-1].WhichOneof("op") == "release_function"  # the last owner gone: released


class FramedHead:
    """A head on a real Unix socket (framed protobuf, as a local head's ``session.sock``) that
    welcomes one session and records every operation it receives, in a thread."""

    def __init__(self, directory) -> None:
        import socket
        import threading

        from starburst._auth import TOKEN_FILE
        from starburst.framing import SESSION_SOCKET

        (directory / TOKEN_FILE).write_text("tok")
        self.address = f"unix:{directory / 'head.sock'}"  # only its directory is used: session.sock
        self.store_url = f"file://{directory}"
        self.received: list[pb.ClientOp] = []
        self.messages = 0  # frames received after the token
        self.changed = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(directory / SESSION_SOCKET))
        self._listener.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from starburst.framing import encode, recv_frame

        conn, _ = self._listener.accept()
        assert recv_frame(conn) == b"tok"
        while (frame := recv_frame(conn)) is not None:
            ops = list(pb.ClientMsg.FromString(frame).ops)
            if any(op.WhichOneof("op") == "hello" for op in ops):
                conn.sendall(encode(pb.HeadMsg(ops=[pb.HeadOp(welcome=pb.Welcome(job_id="job-1",
                                                                                 store_url=self.store_url))])))
            with self.changed:
                self.received.extend(ops)
                self.messages += 1
                self.changed.notify_all()

    def wait_for_release(self, object_id: bytes, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: any(op.WhichOneof("op") == "release" and op.release == object_id for op in self.received),
                timeout)


@pytest.fixture
def framed_session():
    """A driver's client in session with a FramedHead: ``(head, transport, client)``."""
    import shutil
    import uuid

    from starburst import config
    from starburst.driver.client import GrpcTransport

    sockets = config.cluster_runtime_dir(uuid.uuid4().hex)  # short: socket paths are bounded (macOS)
    head = FramedHead(sockets)
    transport = GrpcTransport(head.address)
    client = Client(transport)
    try:
        yield head, transport, client
    finally:
        client.close()
        transport.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_a_released_ref_reaches_the_head_with_nothing_else_to_send(tmp_path, monkeypatch):
    """Releases wait for the next batch (no wake-up of their own while the session is busy), but
    never longer than RELEASE_DELAY_S; once the session is idle, a release leaves at once."""
    import gc

    from starburst import config
    from starburst.driver import client as client_module
    from starburst.driver.client import GrpcTransport

    monkeypatch.setattr(config, "HEAD_TIMEOUT_S", 0)  # no heartbeat pings to carry releases along
    monkeypatch.setattr(client_module, "RELEASE_DELAY_S", 2.0)
    import shutil
    import uuid

    sockets = config.cluster_runtime_dir(uuid.uuid4().hex)  # short: socket paths are bounded (macOS)
    head = FramedHead(sockets)
    transport = GrpcTransport(head.address)
    client = Client(transport)

    def put_and_release(idle: bool) -> None:
        ref = client.put(1)
        object_id = ref._id
        wait_for(lambda: any(op.WhichOneof("op") == "put" and op.put.id == object_id for op in head.received),
                 30, "the put to reach the head")  # the release can't ride with the put's batch
        if idle:  # the timer the put's batch armed is spent: nothing is due any more
            wait_for(lambda: not transport._flush_armed, 30, "the release timer to be spent")
        del ref
        gc.collect()
        assert head.wait_for_release(object_id), f"a release (session {'idle' if idle else 'busy'}) never left"

    try:
        put_and_release(idle=False)  # (busy: it waits for the timer the put's batch armed)
        put_and_release(idle=True)
    finally:
        client.close()
        transport.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_after_a_large_batch_the_session_lets_work_gather(monkeypatch):
    """A program that submits in a loop must not wake the session thread for every other task (each
    wake-up is a system call and a hand-over of the GIL): after a batch of BURST_OPS operations or
    more, the session thread waits LINGER_S before it takes the next batch, and work queued
    meanwhile leaves together. (Both are enlarged here so that the spacing of the puts can't
    decide the outcome.)"""
    import shutil
    import time
    import uuid

    from starburst import config
    from starburst.driver import client as client_module
    from starburst.driver.client import GrpcTransport

    monkeypatch.setattr(client_module, "BURST_OPS", 1)
    monkeypatch.setattr(config, "LINGER_S", 1.0)
    sockets = config.cluster_runtime_dir(uuid.uuid4().hex)
    head = FramedHead(sockets)
    transport = GrpcTransport(head.address)
    client = Client(transport)
    try:
        refs = [client.put(0)]  # the hello has gone: this batch starts a linger
        wait_for(lambda: any(op.WhichOneof("op") == "put" for op in head.received), 30, "the first put")
        before = head.messages
        for i in range(20):  # spaced: without the linger each would leave in a message of its own
            refs.append(client.put(i))
            time.sleep(0.002)
        ids = {ref._id for ref in refs}
        wait_for(lambda: ids <= {op.put.id for op in head.received if op.WhichOneof("op") == "put"}, 30,
                 "every put to reach the head")
        messages = head.messages - before
        assert messages == 1, f"20 puts made while the session lingered took {messages} messages"
    finally:
        client.close()
        transport.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_a_lone_call_leaves_from_the_callers_thread_while_the_session_thread_is_busy(framed_session):
    """A call made when nothing was sent for DIRECT_GAP_S is written by the caller's own thread
    (not through the session thread): it reaches the head even while the session thread can't run."""
    import threading
    import time

    from starburst.driver.client import DIRECT_GAP_S

    head, transport, client = framed_session
    stuck, release = threading.Event(), threading.Event()
    try:
        assert transport._loop is not None
        transport._loop.call_soon_threadsafe(lambda: (stuck.set(), release.wait(60)))
        assert stuck.wait(30), "the session thread never ran the blocking callback"
        wait_for(lambda: time.monotonic() - transport._last_batch >= DIRECT_GAP_S, 30, "a quiet moment")
        ref = client.put(7)
        wait_for(lambda: any(op.WhichOneof("op") == "put" and op.put.id == ref._id for op in head.received),
                 30, "the put to reach the head while the session thread is stuck")
    finally:
        release.set()


def test_calls_keep_their_order_whichever_thread_writes_them(framed_session):
    """Some calls leave from the caller's thread, others in the session thread's batches: each
    thread's calls reach the head in the order it made them."""
    import random
    import threading
    import time

    head, _, client = framed_session
    made: dict[int, list[bytes]] = {}

    def caller(n: int) -> None:
        rng = random.Random(n)
        ids = made.setdefault(n, [])
        for i in range(200):
            ids.append(client.put(i)._id)
            if rng.random() < 0.3:  # now and then a pause: the next call may leave directly
                time.sleep(rng.choice((0.0001, 0.0005, 0.002)))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wanted = {i for ids in made.values() for i in ids}
    wait_for(lambda: wanted <= {op.put.id for op in head.received if op.WhichOneof("op") == "put"}, 30,
             "every put to reach the head")
    arrived = [op.put.id for op in head.received if op.WhichOneof("op") == "put"]
    position = {object_id: k for k, object_id in enumerate(arrived)}
    for n, ids in made.items():
        assert [position[i] for i in ids] == sorted(position[i] for i in ids), f"thread {n}'s puts reordered"


@pytest.mark.parametrize("loop_first", [False, True])
def test_what_the_socket_does_not_take_from_another_thread_leaves_before_later_writes(loop_first):
    """A large batch written from a caller's thread: the socket takes part of it, the rest goes
    through the loop, and a write made on the loop after it (before or after the loop got to
    the rest) arrives after it, both frames whole."""
    import asyncio
    import socket
    import threading

    from starburst.framing import FramedStream, FrameSplitter

    big = pb.ClientMsg(ops=[pb.ClientOp(release=b"x" * (8 << 20))])
    small = pb.ClientMsg(ops=[pb.ClientOp(release=b"y")])
    ours, theirs = socket.socketpair()
    frames: list[bytes] = []

    def receive() -> None:
        splitter = FrameSplitter()
        while len(frames) < 2 and (chunk := theirs.recv(1 << 20)):
            frames.extend(splitter.feed(chunk))

    async def main() -> bool:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        stream = FramedStream(reader, writer, pb.HeadMsg)

        def from_thread() -> None:
            with stream.lock:
                assert stream.can_put_from_thread()
                stream.put_from_thread(big)

        caller = threading.Thread(target=from_thread)
        caller.start()
        caller.join()
        partial = not stream.can_put_from_thread()  # the socket took only part: the rest is pending
        if loop_first:
            await asyncio.sleep(0)  # the loop writes the rest first (the callback queued for it)
        receiver = threading.Thread(target=receive)
        receiver.start()
        await stream.write(small)
        await asyncio.get_running_loop().run_in_executor(None, receiver.join, 60)
        writer.close()
        return partial

    assert asyncio.run(main()), "the socket took all 8 MiB at once: this test checks nothing here"
    theirs.close()
    assert [pb.ClientMsg.FromString(f) for f in frames] == [big, small]


def test_a_forked_child_never_writes_into_its_parents_session(framed_session):
    """A child forked from a driver shares the session's socket: a call it makes must not be
    written there (it would land in the middle of the parent's stream, as a call the parent never
    made)."""
    import os
    import time

    from starburst.driver.client import DIRECT_GAP_S

    head, transport, client = framed_session
    wait_for(lambda: time.monotonic() - transport._last_batch >= DIRECT_GAP_S, 30, "a quiet moment")
    pid = os.fork()
    if pid == 0:  # the child: a call, then out at once (no cleanup of the parent's state)
        try:
            client.put("from the child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    ref = client.put("from the parent")
    wait_for(lambda: any(op.WhichOneof("op") == "put" and op.put.id == ref._id for op in head.received),
             30, "the parent's put to reach the head")
    puts = [op.put.id for op in head.received if op.WhichOneof("op") == "put"]
    assert puts == [ref._id], f"the head got {len(puts)} puts: the child wrote into the parent's session"


def test_a_write_from_another_thread_as_the_link_ends_raises_nothing():
    """A caller's thread writes while the session ends: what the socket doesn't take can't go
    through the loop any more (it is closed), and the call must not fail for that."""
    import asyncio
    import socket

    from starburst.framing import FramedStream

    ours, theirs = socket.socketpair()
    loop = asyncio.new_event_loop()

    async def open_stream() -> FramedStream:
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        return FramedStream(reader, writer, pb.HeadMsg)

    stream = loop.run_until_complete(open_stream())
    loop.close()
    try:
        with stream.lock:
            stream.put_from_thread(pb.ClientMsg(ops=[pb.ClientOp(release=b"x" * (8 << 20))]))
    finally:
        ours.close()
        theirs.close()
