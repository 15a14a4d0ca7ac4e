"""starburst: the Ray Core API on a local cluster by default, and on AWS Fargate on request.

    import starburst as ray

    ray.init()

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(10)]))
"""

from . import exceptions
from ._version import __version__
from .actor import ActorClass, ActorHandle, get_actor, kill, method
from .api import ClusterContext, cancel, get, init, is_initialized, put, remote, shutdown, wait
from .generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .object_ref import ObjectRef
from .progress import progress
from .runtime_context import available_resources, cluster_resources, get_gpu_ids, get_runtime_context, nodes
from .trace import timeline
# Imported eagerly as in Ray, so ``ray.util.X``, ``ray.dag``, ``ray._raylet``, ``ray.remote_function``
# work after a plain ``import ray``.
from . import _raylet, dag, remote_function, util  # noqa: F401

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
