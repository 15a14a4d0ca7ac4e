"""How the head and nodes import gRPC (``config.import_grpc_for_streams``): with the experiments
that read streams on the completion-queue thread, on the releases listed, and never in a way that
leaks into the processes they start or overrides the user's own setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import json, os, sys
from starburst import config
first = config.import_grpc_for_streams()
again = config.import_grpc_for_streams()
print(json.dumps({"first": first, "again": again, "grpc": "grpc" in sys.modules,
                  "left": os.environ.get("GRPC_EXPERIMENTS")}))
"""

# A mutual-TLS stream, as between the head and a node, after the import: the setting must not break it.
_STREAM = """
import asyncio, sys
from starburst import config, tls
applied = config.import_grpc_for_streams()
import grpc

async def main():
    ident = lambda b: b
    async def echo(_, ctx):
        while (m := await ctx.read()) is not grpc.aio.EOF:
            await ctx.write(m)
    ca = tls.ClusterCA.create("c1", valid_days=1)
    node, head = ca.issue_node(), ca.issue_head()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.T", {"E": grpc.stream_stream_rpc_method_handler(echo, ident, ident)}),))
    port = server.add_secure_port("127.0.0.1:0", node.server_credentials())
    await server.start()
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", head.channel_credentials(),
                                       options=head.channel_options()) as channel:
        call = channel.stream_stream("/t.T/E", ident, ident)()
        for i in range(20):
            await call.write(b"%d" % i)
            assert await call.read() == b"%d" % i
        await call.done_writing()
    await server.stop(None)
    print("ok", applied)

asyncio.run(main())
"""


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _listed() -> bool:
    import importlib.metadata

    from starburst import config

    release = ".".join(importlib.metadata.version("grpcio").split(".")[:2])
    return release in config.GRPC_STREAM_EXPERIMENTS


def test_the_experiments_apply_on_listed_releases_and_do_not_leak_to_child_processes():
    got = json.loads(_run(_PROBE))
    assert got == {"first": _listed(), "again": False, "grpc": True, "left": None}


def test_a_users_own_grpc_experiments_are_left_alone():
    got = json.loads(_run(_PROBE, GRPC_EXPERIMENTS="-event_engine_dns"))
    assert got == {"first": False, "again": False, "grpc": True, "left": "-event_engine_dns"}


def test_tls_streams_work_after_the_import():
    assert _run(_STREAM) == f"ok {_listed()}"


def test_the_release_read_from_grpcs_version_file_is_the_installed_distributions():
    import importlib.metadata

    from starburst import config

    installed = ".".join(importlib.metadata.version("grpcio").split(".")[:2])
    assert config._grpcio_release() == installed
