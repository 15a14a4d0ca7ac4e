"""Calls straight from a driver to its actor's process (driver/direct.py, ``ActorDirect``).

The head's books as a state machine (milliseconds, no processes), then the wiring with real
processes: values, order, failures and what the head shows."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from starburst._proto import starburst_pb2 as pb
from starburst.head.scheduler import Task

from conftest import wait_for
from test_scheduler_unit import Harness


GET_TIMEOUT = 60


def _actor(h: Harness, *, max_restarts: int = 0, max_task_retries: int = 0, local: bool = True):
    """A live actor on node "a" (a Unix-socket node when ``local``), created by the harness's driver
    session; returns (node, actor id, the ops pushed to the session)."""
    pushed: list = []
    h.session._deliver = pushed.extend
    node = h.add_node("a", 2)
    node.hello.address = "unix:/run/node.sock" if local else "10.0.0.7:7000"
    spec = h.spec(actor=True)
    spec.actor.max_restarts, spec.actor.max_task_retries = max_restarts, max_task_retries
    (creation,) = h.submit(spec)
    assert h.runs("a") == [creation]
    h.step([pb.NodeToHeadOp(done=pb.TaskDone(task_id=creation, direct_address="/run/actor-1.sock",
                                             direct_token="tok"))], node)
    return node, spec.actor_id, pushed


def _call(h: Harness, actor_id: bytes, direct: int = 1) -> pb.TaskSpec:
    spec = h.spec(cpus=0)
    spec.actor_id, spec.method, spec.direct = actor_id, "m", direct
    return spec


def _value(text: str) -> pb.Value:
    return pb.Value(inline=text.encode())


def test_the_creator_is_told_where_its_actor_takes_calls():
    h = Harness()
    _, actor_id, pushed = _actor(h)
    (announced,) = [op.actor_direct for op in pushed if op.WhichOneof("op") == "actor_direct"]
    assert (announced.actor_id, announced.address, announced.token) == (actor_id, "/run/actor-1.sock", "tok")
    assert announced.incarnation == 1 and announced.ordered


def test_an_actor_on_a_remote_node_is_not_announced():
    h = Harness()
    _, _, pushed = _actor(h, local=False)
    assert not [op for op in pushed if op.WhichOneof("op") == "actor_direct"]


def test_a_direct_call_is_in_the_books_without_being_sent_and_its_end_reported_by_the_caller():
    h = Harness()
    node, actor_id, pushed = _actor(h)
    call = _call(h, actor_id)
    h.submit(call)
    assert h.runs("a") == []  # the caller sent it already
    task = h.s.tasks[call.task_id]
    assert task.state == Task.RUNNING and call.task_id in node.actor_inflight
    pushed.clear()
    rid = call.return_ids[0]
    h.step([pb.ClientOp(direct_done=pb.TaskDone(task_id=call.task_id, results=[pb.Object(id=rid, value=_value("v"))]))])
    assert call.task_id not in h.s.tasks and call.task_id not in node.actor_inflight
    assert h.s.objects[rid].value.inline == b"v"  # kept for whoever gets the ref next
    assert not [op for op in pushed if op.WhichOneof("op") == "ready"]  # the caller has it


def test_the_end_of_a_direct_call_that_came_through_the_node_first_is_kept_for_it():
    h = Harness()
    node, actor_id, pushed = _actor(h)
    call = _call(h, actor_id)
    rid = call.return_ids[0]
    h.done(node, call.task_id)  # (refs in its result: the actor's process sent it to the node)
    h.s.on_node_ops(node, [pb.NodeToHeadOp(done=pb.TaskDone(
        task_id=call.task_id, results=[pb.Object(id=rid, value=_value("w"))]))], lambda *_: None)
    h.submit(call)  # the caller's word of it comes after
    assert call.task_id not in h.s.tasks
    assert [op.ready.value.inline for op in pushed if op.WhichOneof("op") == "ready"] == [b"w"]


def _word(h: Harness, call: pb.TaskSpec, answered: bool) -> None:
    """The caller's word on a direct call whose process died: answered (with a value) or not."""
    if answered:
        done = pb.TaskDone(task_id=call.task_id, results=[pb.Object(id=call.return_ids[0], value=_value("v"))])
    else:
        done = pb.TaskDone(task_id=call.task_id, failure=pb.TaskDone.WORKER_DIED)
    h.step([pb.ClientOp(direct_done=done)])


@pytest.mark.parametrize("retries", [0, 1])
def test_a_direct_call_to_a_process_that_has_died_since_waits_for_its_callers_word(retries):
    h = Harness()
    node, actor_id, pushed = _actor(h, max_restarts=1, max_task_retries=retries)
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=actor_id, reason="killed"))], node)
    creation_again = h.runs("a")
    assert len(creation_again) == 1  # restarting
    call = _call(h, actor_id, direct=1)  # sent to the first incarnation, which is gone
    h.submit(call)
    assert h.s.tasks[call.task_id].state == Task.WAITING and h.runs("a") == []
    _word(h, call, answered=False)
    if retries:
        h.done(node, *creation_again)
        assert h.runs("a") == [call.task_id]  # sent to the new process
    else:
        assert call.task_id not in h.s.tasks
        (ready,) = [op.ready for op in pushed if op.WhichOneof("op") == "ready"]
        assert ready.id == call.return_ids[0] and ready.value.is_error


def test_an_actor_out_of_scope_waits_for_the_word_on_its_direct_calls():
    """The last handle goes while a direct call's process has died and the head waits for its
    caller's word: the actor must not end then (it did, and the retry the word allows failed with
    'The actor ... is dead.': seen once in a full run, test_a_direct_call_whose_actor_process_dies_
    fails_or_is_retried, whose handle is a temporary)."""
    h = Harness()
    node, actor_id, pushed = _actor(h, max_restarts=1, max_task_retries=1)
    call = _call(h, actor_id)
    h.submit(call)
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=actor_id, reason="killed"))], node)
    (creation_again,) = h.runs("a")
    h.step([pb.ClientOp(release=actor_id)])  # the caller's handle is gone
    assert actor_id in h.s.actors, "ended while a call waited for its caller's word"
    _word(h, call, answered=False)
    h.done(node, creation_again)
    assert h.runs("a") == [call.task_id]  # retried on the new process
    h.done(node, call.task_id)
    assert call.task_id not in h.s.tasks
    assert actor_id not in h.s.actors  # and then, its calls done and no handle left, it ends
    assert not [op.ready for op in pushed if op.WhichOneof("op") == "ready" and op.ready.value.is_error]


@pytest.mark.parametrize("answered", [True, False])
def test_a_direct_call_whose_process_dies_ends_as_its_caller_says(answered):
    """Answered before the process died: its value stands (the call must not run again). Not
    answered: lost like any call in flight (no restarts here: ActorDiedError)."""
    h = Harness()
    node, actor_id, pushed = _actor(h)
    call = _call(h, actor_id)
    h.submit(call)
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=actor_id, reason="killed"))], node)
    assert call.task_id in h.s.tasks, "decided before its caller's word"
    pushed.clear()
    _word(h, call, answered)
    assert call.task_id not in h.s.tasks
    rid = call.return_ids[0]
    if answered:
        assert h.s.objects[rid].value.inline == b"v"
        assert not [op for op in pushed if op.WhichOneof("op") == "ready"]  # the caller has it
    else:
        (ready,) = [op.ready for op in pushed if op.WhichOneof("op") == "ready"]
        assert ready.id == rid and ready.value.is_error


def test_a_caller_that_sees_the_connection_break_first_has_the_call_lost_when_the_death_comes():
    h = Harness()
    node, actor_id, pushed = _actor(h)
    call = _call(h, actor_id)
    h.submit(call)
    _word(h, call, answered=False)  # before the node's report of the death
    assert h.s.tasks[call.task_id].state == Task.RUNNING  # (its process may live on: it reports via the node)
    h.step([pb.NodeToHeadOp(actor_died=pb.ActorDied(actor_id=actor_id, reason="killed"))], node)
    assert call.task_id not in h.s.tasks
    (ready,) = [op.ready for op in pushed if op.WhichOneof("op") == "ready"]
    assert ready.id == call.return_ids[0] and ready.value.is_error


def test_refs_in_an_end_that_came_before_its_call_stay_alive_until_it_is_applied():
    h = Harness()
    node, actor_id, pushed = _actor(h)
    inner = b"p" * 20
    h.step([pb.ClientOp(put=pb.Object(id=inner, value=_value("inner")))])  # (stands for the task's put)
    call = _call(h, actor_id)
    rid = call.return_ids[0]
    value = pb.Value(inline=b"outer", contained=[inner])
    h.s.on_node_ops(node, [pb.NodeToHeadOp(done=pb.TaskDone(task_id=call.task_id,
                                                            results=[pb.Object(id=rid, value=value)]))],
                    lambda *_: None)
    h.step([pb.ClientOp(release=inner)])  # its putter lets go before the call is known
    assert inner in h.s.objects, "a ref inside a result was freed before the result pinned it"
    h.submit(call)
    assert h.s.objects[inner].refs == 1  # now held by the result only
    h.step([pb.ClientOp(release=rid)])
    assert inner not in h.s.objects


def test_a_driver_that_leaves_takes_its_direct_calls_with_it():
    h = Harness()
    node, actor_id, _ = _actor(h)
    call = _call(h, actor_id)
    h.submit(call)
    h.s.close_session(h.session)
    h.s.check_invariants()
    assert call.task_id not in h.s.tasks and call.task_id not in node.actor_inflight


# ------------------------------------------------------------------------------ real processes


def _channel(ray, handle):
    from starburst import _runtime

    return _runtime.get_client()._channels.get(handle._actor_id.binary())


class FakeActor:
    """An actor process's end of a direct connection on a real Unix socket: takes the token, then
    records each chunk of calls it reads (as the task ids in it); ``answer`` ends a call."""

    def __init__(self, path: str) -> None:
        import socket

        self.chunks: list[list[bytes]] = []
        self.changed = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self.conn: socket.socket | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from starburst.framing import FrameSplitter, recv_frame

        conn, _ = self._listener.accept()
        assert recv_frame(conn) == b"tok"
        self.conn = conn
        splitter = FrameSplitter()
        while data := conn.recv(1 << 20):
            ids = [pb.Run.FromString(f).spec.task_id for f in splitter.feed(data)]
            with self.changed:
                self.chunks.append(ids)
                self.changed.notify_all()

    def received(self) -> list[bytes]:
        return [t for chunk in self.chunks for t in chunk]

    def answer(self, task_id: bytes) -> None:
        from starburst.framing import encode

        assert self.conn is not None
        self.conn.sendall(encode(pb.TaskDone(task_id=task_id)))


def test_calls_beyond_the_first_few_out_leave_together_when_an_answer_comes():
    """With BUFFER_AFTER calls out, later ones wait in the channel (the actor has work queued) and
    leave in one write when the next answer comes, or when a cancel needs them at the actor."""
    import shutil
    import uuid

    from starburst import config
    from starburst.driver.direct import BUFFER_AFTER, DirectChannel

    sockets = config.cluster_runtime_dir(uuid.uuid4().hex)  # short: socket paths are bounded (macOS)
    path = str(sockets / "actor.sock")
    actor = FakeActor(path)
    answers: list[bytes] = []
    channel = DirectChannel(pb.ActorDirect(actor_id=b"a" * 16, address=path, token="tok", incarnation=1,
                                           ordered=True),
                            lambda _channel, done: answers.append(done.task_id), lambda _channel: None)

    def call(i: int) -> bytes:
        task_id = i.to_bytes(16, "big")
        assert channel.send(pb.Run(spec=pb.TaskSpec(task_id=task_id)))
        return task_id

    try:
        first = [call(i) for i in range(BUFFER_AFTER)]
        wait_for(lambda: actor.received() == first, 30, "the first calls to reach the actor")
        later = [call(i) for i in range(BUFFER_AFTER, BUFFER_AFTER + 20)]
        assert len(channel._unsent) == 20  # held: no answer has come yet
        chunks = len(actor.chunks)
        actor.answer(first[0])
        wait_for(lambda: actor.received() == first + later, 30, "the waiting calls to leave")
        assert actor.chunks[chunks:] == [later]  # in one write, after the answer
        assert answers == [first[0]]
        last = [call(i) for i in range(100, 103)]  # out: 27 >= BUFFER_AFTER, so these wait
        channel.flush()  # (a cancel does this first)
        wait_for(lambda: actor.received()[-3:] == last, 30, "the flushed calls")
    finally:
        channel.close()
        shutil.rmtree(sockets, ignore_errors=True)


def test_calls_to_an_actor_that_runs_several_at_once_always_leave_at_once():
    """An async or threaded actor may have every call out waiting for a later one (an event the
    later call sets): holding that call back in the channel would hang them all."""
    import shutil
    import uuid

    from starburst import config
    from starburst.driver.direct import BUFFER_AFTER, DirectChannel

    sockets = config.cluster_runtime_dir(uuid.uuid4().hex)
    path = str(sockets / "actor.sock")
    actor = FakeActor(path)
    channel = DirectChannel(pb.ActorDirect(actor_id=b"a" * 16, address=path, token="tok", incarnation=1,
                                           ordered=False), lambda *_: None, lambda _channel: None)
    try:
        calls = [i.to_bytes(16, "big") for i in range(BUFFER_AFTER + 5)]
        for task_id in calls:
            assert channel.send(pb.Run(spec=pb.TaskSpec(task_id=task_id)))
        assert channel._unsent == []
        wait_for(lambda: actor.received() == calls, 30, "every call to reach the actor, none answered")
    finally:
        channel.close()
        shutil.rmtree(sockets, ignore_errors=True)


class Counter:
    """An actor's class for these tests (made remote in each: the cluster fixture is the module)."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def fail(self) -> None:
        raise ValueError("no")


def test_calls_go_straight_to_the_actor_and_the_head_keeps_the_books(cluster):
    ray = cluster
    c = ray.remote(Counter).remote()
    assert [ray.get(c.incr.remote(), timeout=GET_TIMEOUT) for _ in range(20)] == list(range(1, 21))
    channel = _channel(ray, c)
    assert channel is not None and channel.alive, "the calls did not go straight to the actor"
    refs = [c.incr.remote() for _ in range(200)]  # pipelined
    assert ray.get(refs, timeout=GET_TIMEOUT) == list(range(21, 221))
    with pytest.raises(ValueError, match="no"):
        ray.get(c.fail.remote(), timeout=GET_TIMEOUT)  # the remote traceback comes back too

    def counted() -> bool:
        runs = [r for r in ray.timeline() if r.get("name") == "Counter.incr"]
        return len(runs) == 220
    wait_for(counted, 30, "the head to record every call")


def test_calls_with_refs_to_resolve_keep_their_order_with_direct_ones(cluster):
    ray = cluster

    @ray.remote
    def later(x):
        time.sleep(0.2)
        return x

    @ray.remote
    class Log:
        def __init__(self) -> None:
            self.seen: list = []

        def add(self, x) -> list:
            self.seen.append(x)
            return list(self.seen)

    log = Log.remote()
    ray.get(log.add.remote(0), timeout=GET_TIMEOUT)
    refs = [log.add.remote(1), log.add.remote(later.remote(2)), log.add.remote(3), log.add.remote(later.remote(4)),
            log.add.remote(5)]
    assert ray.get(refs[-1], timeout=GET_TIMEOUT) == [0, 1, 2, 3, 4, 5]


def test_a_call_that_must_go_through_the_head_waits_for_the_direct_ones_without_blocking_remote(cluster, tmp_path):
    """On an actor that runs calls in order, a call with a ref to resolve is held by the driver
    until the calls sent direct before it have ended; ``.remote()`` returns at once (as in Ray)."""
    ray = cluster

    @ray.remote
    class Gate:
        def wait_for(self, path: str) -> str:
            while not os.path.exists(path):
                time.sleep(0.01)
            return "opened"

        def value(self, x):
            return x

    g = Gate.remote()
    assert ray.get(g.value.remote(0), timeout=GET_TIMEOUT) == 0
    gate = str(tmp_path / "gate")
    first = g.wait_for.remote(gate)  # runs until the file appears
    queued = g.value.remote(1)
    made: list = []
    caller = threading.Thread(target=lambda: made.append(g.value.remote(ray.put(3))), daemon=True)
    caller.start()
    caller.join(30)  # (the gate opens only after this: a .remote() that waited would never return)
    assert made, ".remote() waited for the calls before it"
    (held,) = made
    with open(gate, "w"):
        pass
    assert ray.get(held, timeout=GET_TIMEOUT) == 3
    assert ray.get([first, queued], timeout=GET_TIMEOUT) == ["opened", 1]


def test_an_actors_socket_goes_with_its_process(cluster):
    """What the actor's process starts to take direct calls (its socket) is gone when the process
    is: killed at once, with a call running."""
    ray = cluster

    @ray.remote
    class Busy:
        def ready(self) -> bool:
            return True

        def spin(self) -> None:
            time.sleep(60)

    before = _actor_sockets()
    b = Busy.remote()
    assert ray.get(b.ready.remote(), timeout=GET_TIMEOUT)
    (path,) = _actor_sockets() - before
    assert os.path.exists(path)
    b.spin.remote()
    ray.kill(b)
    wait_for(lambda: not os.path.exists(path), 30, "the dead actor's socket to be removed")


def _actor_sockets() -> set[str]:
    """The direct-call sockets this cluster's actors listen on (from /proc/net/unix)."""
    from starburst import _runtime

    cluster_dir = os.path.dirname(_runtime.get_client().transport.address.removeprefix("unix:")) + os.sep
    with open("/proc/net/unix") as f:
        next(f)
        return {row[7] for row in (line.split() for line in f)
                if len(row) >= 8 and row[7].startswith(cluster_dir) and "/actor-" in row[7]}


def test_a_direct_call_whose_actor_process_dies_fails_or_is_retried(cluster, tmp_path):
    ray = cluster

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Sleeper:
        def pid(self) -> int:
            return os.getpid()

        def nap(self, marker: str) -> str:
            if not os.path.exists(marker):  # the first attempt waits to be killed
                open(marker, "w").close()
                time.sleep(60)
            return "rested"

    ref = _killed_mid_call(ray, Sleeper.remote(), str(tmp_path / "started"))
    assert ray.get(ref, timeout=GET_TIMEOUT) == "rested"  # retried on the restarted actor

    @ray.remote
    class Once:
        def pid(self) -> int:
            return os.getpid()

        def nap(self, marker: str) -> None:
            open(marker, "w").close()
            time.sleep(60)

    ref = _killed_mid_call(ray, Once.remote(), str(tmp_path / "once"))
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(ref, timeout=GET_TIMEOUT)


def _killed_mid_call(ray, actor, marker: str):
    """Call ``actor.nap(marker)`` (it creates ``marker``, then sleeps) and kill the actor's process
    once the call has started; returns the call's ref."""
    pid = ray.get(actor.pid.remote(), timeout=GET_TIMEOUT)
    ref = actor.nap.remote(marker)
    wait_for(lambda: os.path.exists(marker), 30, "the call to start")
    os.kill(pid, signal.SIGKILL)
    return ref


def test_a_forked_child_never_calls_through_its_parents_channel(cluster):
    """A child forked from a driver shares the connection to the actor: a call it makes must not
    be written there (the actor would run a call its caller never made)."""
    ray = cluster
    c = ray.remote(Counter).remote()
    n = ray.get(c.incr.remote(), timeout=GET_TIMEOUT)
    for _ in range(200):  # the head tells the driver where the actor takes calls: calls then go there
        channel = _channel(ray, c)
        if channel is not None and channel.alive:
            break
        n = ray.get(c.incr.remote(), timeout=GET_TIMEOUT)
    else:
        raise AssertionError("the calls never went straight to the actor")
    n = ray.get(c.incr.remote(), timeout=GET_TIMEOUT)  # (sent on the channel)
    pid = os.fork()
    if pid == 0:  # the child: a call, then out at once
        try:
            c.incr.remote()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert ray.get(c.incr.remote(), timeout=GET_TIMEOUT) == n + 1, "the actor ran the child's call"
