"""The head: one local process that owns the scheduler, the object directory and the nodes.

- ``scheduler.py``: the state machine (tasks, objects, placement), no I/O.
- ``server.py``: the gRPC service drivers talk to, links to the nodes, the head's lifecycle.
- ``nodes.py``: starting local node processes (the embedded default) and dialling nodes.
- ``process.py``: used by drivers and the CLI to find, start and stop a head.
"""
