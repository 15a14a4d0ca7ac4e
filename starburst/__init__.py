"""starburst: the Ray Core API on a local cluster by default, and on AWS Fargate on request.

    import starburst as ray

    ray.init()

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(10)]))
"""

import atexit
import sys
from typing import TYPE_CHECKING

from . import exceptions
from ._version import __version__
from .progress import progress

# The rest of the public API is imported on first use (PEP 562's module ``__getattr__``): the head,
# node and executor processes import this package too, and each spent ~0.13 s at its start importing
# an API it barely uses (on the path to a cluster's first result: the head starts its node, and the
# node its executors, only once their own imports are done). ``ray.util.X``, ``ray.dag``,
# ``ray._raylet`` and ``ray.remote_function`` work after a plain ``import ray``, as in Ray.
_LAZY = {
    "ActorClass": "actor", "ActorHandle": "actor", "get_actor": "actor", "kill": "actor", "method": "actor",
    "ClusterContext": "api", "cancel": "api", "get": "api", "init": "api", "is_initialized": "api",
    "put": "api", "remote": "api", "shutdown": "api", "wait": "api",
    "DynamicObjectRefGenerator": "generators", "ObjectRefGenerator": "generators",
    "ObjectRef": "object_ref",
    "available_resources": "runtime_context", "cluster_resources": "runtime_context",
    "get_gpu_ids": "runtime_context", "get_runtime_context": "runtime_context", "nodes": "runtime_context",
    "timeline": "trace",
}


def _at_exit() -> None:
    """Registered at ``import starburst`` (as Ray registers at ``import ray``), so that a script's own
    exit hooks, registered later, run first: then unfinished tasks get their grace (``api._exit_grace``)
    and the session ends."""
    api = sys.modules.get(f"{__name__}.api")
    if api is not None:
        api._exit_grace()
        api.shutdown()


atexit.register(_at_exit)

if TYPE_CHECKING:
    from . import _raylet, dag, remote_function, util  # noqa: F401
    from .actor import ActorClass, ActorHandle, get_actor, kill, method
    from .api import ClusterContext, cancel, get, init, is_initialized, put, remote, shutdown, wait
    from .generators import DynamicObjectRefGenerator, ObjectRefGenerator
    from .object_ref import ObjectRef
    from .runtime_context import available_resources, cluster_resources, get_gpu_ids, get_runtime_context, nodes
    from .trace import timeline

#: Ray names that starburst does not provide, and what to do instead (one line each).
_UNSUPPORTED = {
    "get_tpu_ids": "TPUs are not supported by starburst",
    "client": "Ray Client (ray.client / ray://) is not supported: call init() with the head's address",
    "cross_language": "cross-language calls are not supported by starburst (Python only)",
    "java_function": "cross-language calls are not supported by starburst (Python only)",
    "java_actor_class": "cross-language calls are not supported by starburst (Python only)",
    "cpp_function": "cross-language calls are not supported by starburst (Python only)",
    "show_in_dashboard": "starburst has no Ray dashboard; ray.show_in_dashboard is not supported",
}


def __getattr__(name: str):
    import importlib
    import importlib.util

    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # (importing a submodule binds its name here: this comes after)
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # a submodule: ray.util, ray.dag, ...
    if name in _UNSUPPORTED:
        raise AttributeError(f"module 'ray' (starburst) has no attribute {name!r}: {_UNSUPPORTED[name]}")
    raise AttributeError(f"module 'starburst' has no attribute {name!r}")

__all__ = [
    "__version__",
    "ActorClass",
    "ActorHandle",
    "get_actor",
    "kill",
    "method",
    "ClusterContext",
    "ObjectRef",
    "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "available_resources",
    "cluster_resources",
    "get_runtime_context",
    "get_gpu_ids",
    "nodes",
    "progress",
    "timeline",
    "cancel",
    "exceptions",
    "get",
    "init",
    "is_initialized",
    "put",
    "remote",
    "shutdown",
    "wait",
]
