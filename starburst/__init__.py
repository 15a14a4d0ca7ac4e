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
from .object_ref import ObjectRef

__all__ = [
    "__version__",
    "ActorClass",
    "ActorHandle",
    "get_actor",
    "kill",
    "method",
    "ClusterContext",
    "ObjectRef",
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
