"""Where a head's nodes come from: a node provider starts them, tells the head where to dial, and
stops them. One interface serves the embedded local cluster (``LocalProvider``) and Fargate
(``starburst.aws.provider.FargateProvider``); the head itself doesn't know which it has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from typing import TYPE_CHECKING

import grpc

from .. import config
from .._proto import starburst_pb2 as pb
from ..framing import LINK_SOCKET
from .nodes import LocalNodeProcess

if TYPE_CHECKING:
    from .server import Head

log = logging.getLogger("starburst.head")


class NodeProvider:
    """The head's source of nodes. The head calls ``start`` once it serves drivers, ``tick`` about
    once a second while it runs, and ``stop`` when it shuts down (every node it started must be
    gone or going when ``stop`` returns)."""

    name = "base"
    #: Where the cluster's large objects live (an ``open_store`` URL).
    store_url: str = ""

    async def start(self, head: "Head") -> None:
        raise NotImplementedError

    async def tick(self) -> None:
        """Periodic housekeeping: scaling, budget, noticing stopped nodes."""

    async def stop(self) -> None:
        raise NotImplementedError

    def channel(self, address: str) -> grpc.aio.Channel:
        """A channel to a node of this cluster."""
        return grpc.aio.insecure_channel(address, options=config.GRPC_OPTIONS)

    def node_metadata(self, address: str = "") -> tuple[tuple[str, str], ...]:
        """gRPC metadata the head presents to this provider's node at ``address`` (a local node's token)."""
        return ()

    def framed_link(self, address: str) -> tuple[str, str] | None:
        """(socket path, token) of a node's framed link, used instead of its gRPC address (a local
        node: framed protobuf over a Unix socket costs much less per message); None: gRPC."""
        return None

    def node_shape(self) -> pb.Resources | None:
        """The resources of the nodes this provider can still start (so that a task can be
        accepted before its node exists), or None."""
        return None

    def status(self) -> pb.ClusterStatus:
        return pb.ClusterStatus(provider=self.name)

    def node_lost(self, address: str, reason: str) -> None:
        """A node's stream ended (the head retries its tasks elsewhere)."""


class LocalProvider(NodeProvider):
    """One node process on this machine, replaced if it dies; its store is a memory-backed directory
    (or ``store_url``: a hybrid cluster's local node shares the Fargate nodes' S3 store)."""

    name = "local"

    def __init__(self, num_cpus: float, store_dir: str, cluster_id: str,
                 first_node: subprocess.Popen | None, node_token: str, store_url: str = "") -> None:
        self.num_cpus = num_cpus
        self.store_dir = store_dir
        self.store_url = store_url or "file://" + store_dir
        self._node_store = store_url
        self.cluster_id = cluster_id
        self.first_node = first_node
        self.node_token = node_token
        self.nodes: list[LocalNodeProcess] = []
        self.started = 0
        self.head: Head | None = None
        self.stopping = False
        self._watchers: set[asyncio.Task] = set()

    async def start(self, head: "Head") -> None:
        self.head = head
        await self._start_node()

    def node_metadata(self, address: str = "") -> tuple[tuple[str, str], ...]:
        from .._auth import call_metadata

        return call_metadata(self.node_token)

    def framed_link(self, address: str) -> tuple[str, str] | None:
        if not address.startswith("unix:") or os.environ.get("STARBURST_NODE_LINK") == "grpc":
            return None
        return os.path.join(os.path.dirname(address[len("unix:"):]), LINK_SOCKET), self.node_token

    async def _start_node(self) -> None:
        assert self.head is not None
        node = LocalNodeProcess(
            f"local-{self.started}", self.num_cpus, self.store_dir,
            str(config.head_log()), self.first_node,
            str(config.cluster_runtime_dir(self.cluster_id)), self.node_token, self._node_store,
        )
        self.first_node = None
        self.started += 1
        self.nodes.append(node)
        address = await node.start()
        await self.head.connect_node(address)
        watcher = asyncio.ensure_future(self._watch(node))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, node: LocalNodeProcess) -> None:
        code = await node.wait()
        node.remove_files()  # a killed node leaves its socket directory (and object cache) behind
        if self.stopping:
            return
        log.error("local node %s exited with %s; starting a new one", node.node_id, code)
        self.nodes.remove(node)
        try:
            await self._start_node()
        except Exception:
            log.exception("could not restart the local node")

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(n.stop() for n in self.nodes), return_exceptions=True)
        for watcher in list(self._watchers):
            watcher.cancel()
