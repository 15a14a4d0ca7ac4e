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
from .runtime_context import available_resources, cluster_resources, get_runtime_context, nodes
from .trace import timeline

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
