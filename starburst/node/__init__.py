"""The node: a gRPC server the head streams tasks into, running them in executor processes.

- ``server.py``: the Node service, the executor pool and the node's local queue.
- ``executor.py``: the executor process (one task at a time; an actor gets a process of its own).
- ``framing.py``: length-prefixed protobuf frames on the node <-> executor Unix socket.
"""
