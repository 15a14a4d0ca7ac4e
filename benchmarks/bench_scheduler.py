"""The head's CPU per task without I/O: its scheduler and its protobuf work, nothing else.

One driver session and one 2-CPU node, both in this process. Submits arrive as parsed ``ClientMsg``
batches, the node answers each run it was sent with a ``TaskDone`` (in batches of 16, as a busy
node does), and every batch the scheduler queues is serialized as the head's links would. Only the
head's side is timed (parse, ``on_client_ops`` / ``on_node_ops``, ``flush`` with serialization);
building the node's answers is not. The event loop, sockets and framing are left out: `bench_cpu.py`
measures the whole head process. Usage, from the repository root:

    .venv/bin/python benchmarks/bench_scheduler.py              # 20,000 tasks, best and median of 7
    .venv/bin/python benchmarks/bench_scheduler.py -n 50000 --batch 500

Process CPU time (``time.process_time``), so a busy machine moves it less than wall time; compare
trees back to back.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from starburst import config
from starburst._proto import starburst_pb2 as pb
from starburst.head.observer import Observer
from starburst.head.scheduler import Node, Scheduler, Session

NODE_BATCH = 16  # dones per message from the node


class _NoStore:
    url = "file:///nowhere"

    def delete(self, key: str) -> None:
        pass


def _serialized(message_type, sent: list[bytes]):
    def deliver(ops: list) -> None:
        sent.extend(m.SerializeToString() for m in config.batch_messages(message_type, ops))
    return deliver


def run(n: int, batch: int) -> float:
    """CPU seconds the head's side spent per task over ``n`` tasks."""
    scheduler = Scheduler(_NoStore())
    scheduler.observer = Observer(scheduler, None)
    to_node: list[bytes] = []
    to_driver: list[bytes] = []
    session = Session(scheduler, "job-bench", _serialized(pb.HeadMsg, to_driver))
    scheduler.open_session(session)
    function = pb.Function(id=b"f" * 32, pickled=b"x" * 200, name="__main__.nop")
    scheduler.on_client_ops(session, [pb.ClientOp(function=function)])
    hello = pb.NodeHello(node_id="local")
    hello.resources.cpus = 2
    node = Node(scheduler, "local", hello, _serialized(pb.HeadToNode, to_node))
    scheduler.add_node(node)
    scheduler.flush()

    ids = itertools.count(1)

    def spec() -> pb.TaskSpec:
        task_id = next(ids).to_bytes(16, "big")
        s = pb.TaskSpec(task_id=task_id, function_id=function.id, name=function.name,
                        return_ids=[task_id + b"\0\0\0\1"], max_retries=3)
        s.args.inline = b"\x80\x05" + b"x" * 40
        s.args.size = 42
        s.resources.cpus = 1
        return s

    submits = [pb.ClientMsg(ops=[pb.ClientOp(submit=spec()) for _ in range(batch)]).SerializeToString()
               for _ in range(n // batch)]
    spent = 0.0
    clock = time.process_time
    for raw in submits:
        t0 = clock()
        msg = pb.ClientMsg.FromString(raw)
        scheduler.on_client_ops(session, msg.ops)
        scheduler.flush()
        spent += clock() - t0
        while to_node:
            runs = [op.run for op in pb.HeadToNode.FromString(to_node.pop(0)).ops if op.WhichOneof("op") == "run"]
            for i in range(0, len(runs), NODE_BATCH):
                reply = pb.NodeToHead()
                for run_op in runs[i:i + NODE_BATCH]:
                    done = reply.ops.add().done
                    done.task_id = run_op.spec.task_id
                    done.duration_s = 0.00005
                    done.executor_pid = 1234
                    result = done.results.add()
                    result.id = run_op.spec.return_ids[0]
                    result.value.inline = b"\x80\x05K\x01."
                    result.value.size = 5
                answer = reply.SerializeToString()
                t0 = clock()
                scheduler.on_node_ops(node, pb.NodeToHead.FromString(answer).ops, lambda *_: None)
                scheduler.flush()
                spent += clock() - t0
        to_driver.clear()
    finished = scheduler.tasks_finished
    if finished != (n // batch) * batch:
        raise SystemExit(f"only {finished} of {(n // batch) * batch} tasks finished")
    return spent / finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--batch", type=int, default=200, help="submits per driver message")
    parser.add_argument("--reps", type=int, default=7, help="runs (best and median reported)")
    args = parser.parse_args()
    if args.n < args.batch or args.batch < 1 or args.reps < 1:
        parser.error("need -n >= --batch >= 1 and --reps >= 1")
    runs = [run(args.n, args.batch) for _ in range(args.reps)]
    print(f"head scheduler + protobuf, CPU per task over {args.n:,} tasks: best {min(runs) * 1e3:.4f} ms, "
          f"median {statistics.median(runs) * 1e3:.4f} ms ({args.reps} runs)")


if __name__ == "__main__":
    main()
