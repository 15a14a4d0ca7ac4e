"""Errors raised by starburst, mirroring ``ray.exceptions`` (Ray's names are aliases here).

A task's exception comes back as a :class:`RayTaskError` that is *also* an instance of the user's
exception class, so ``except ValueError:`` catches a remote ``ValueError``; its text carries the
remote traceback.
"""

from __future__ import annotations

from typing import Any, Callable


class RayError(Exception):
    """Base class of every starburst error (``ray.exceptions.RayError``)."""


StarburstError = RayError


class RaySystemError(RayError):
    """starburst itself failed (a bug or a broken installation), not the user's code."""


class RayTaskError(RayError):
    """A task raised an exception; ``cause`` is that exception and the text its remote traceback."""

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        pid: int = 0,
        node: str = "",
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node = node
        super().__init__(function_name, traceback_str, cause, pid, node)

    def __reduce__(self):
        return (RayTaskError, (self.function_name, self.traceback_str, _picklable(self.cause), self.pid, self.node))

    def __str__(self) -> str:
        where = f"pid={self.pid}" + (f", node={self.node}" if self.node else "")
        return f"{self.function_name}() ({where})\n{self.traceback_str.rstrip()}"

    def as_instanceof_cause(self) -> "RayTaskError":
        """Return an equivalent error that is also an instance of the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, RayTaskError) or not issubclass(cause_cls, Exception):
            return self
        return _dual_class(cause_cls)(self)


def _picklable(cause: BaseException | None) -> BaseException | None:
    """``cause`` if it survives pickling and unpickling, else a RayError that says what it was (an
    exception whose ``__init__`` needs other arguments than its ``args`` can't be rebuilt): the
    remote traceback, kept beside it, still tells the whole story."""
    if cause is None:
        return None
    import pickle

    try:
        import cloudpickle

        pickle.loads(cloudpickle.dumps(cause))
        return cause
    except Exception as exc:  # noqa: BLE001 - any failure to round-trip
        return RayError(f"{type(cause).__module__}.{type(cause).__qualname__}: {cause} (the original exception "
                        f"could not be sent back: {type(exc).__name__}: {exc})")


_dual_classes: dict[type, Callable[[RayTaskError], RayTaskError]] = {}


def _dual_class(cause_cls: type) -> Callable[[RayTaskError], RayTaskError]:
    """The class that is both RayTaskError and ``cause_cls`` (made once per cause class), or, when
    ``cause_cls`` can't be subclassed, a function that leaves the error as it is."""
    cls = _dual_classes.get(cause_cls)
    if cls is not None:
        return cls
    try:

        class _Dual(RayTaskError, cause_cls):
            def __init__(self, error: RayTaskError) -> None:
                RayTaskError.__init__(
                    self, error.function_name, error.traceback_str, error.cause, error.pid, error.node
                )
                # Let ``except ValueError as e: e.args`` look like the original exception.
                self.args = error.cause.args if error.cause is not None else ()

            def __getattr__(self, name: str) -> Any:
                cause = self.__dict__.get("cause")
                if cause is None:
                    raise AttributeError(name)
                return getattr(cause, name)

            __str__ = RayTaskError.__str__

            def __reduce__(self):
                return (_rebuild_dual, (RayTaskError.__reduce__(self)[1],))

        _Dual.__name__ = f"RayTaskError({cause_cls.__name__})"
        _Dual.__qualname__ = _Dual.__name__
        made: Callable[[RayTaskError], RayTaskError] = _Dual
    except TypeError:  # e.g. a class that forbids subclassing, or conflicting layouts
        def made(error: RayTaskError) -> RayTaskError:
            return error
    _dual_classes[cause_cls] = made
    return made


def _rebuild_dual(args: tuple) -> RayTaskError:
    return RayTaskError(*args).as_instanceof_cause()


TaskError = RayTaskError


class GetTimeoutError(RayError, TimeoutError):
    """``get`` did not finish within its timeout."""


class TaskCancelledError(RayError):
    """The task was cancelled with ``starburst.cancel`` before it finished."""

    def __init__(self, task_id: str = "", message: str = "") -> None:
        self.task_id = task_id
        super().__init__(message or f"Task {task_id} was cancelled")

    def __reduce__(self):
        return (TaskCancelledError, (self.task_id, str(self)))


class WorkerCrashedError(RayError):
    """The process running the task died (and its retries, if any, were used up)."""


class RayActorError(RayError):
    """An actor can't run a call: it died, or could not be created (``ray.exceptions.RayActorError``)."""

    def __init__(self, actor_id: str = "", message: str = "", cause: BaseException | str | None = None) -> None:
        self.actor_id = actor_id
        self.cause = cause
        super().__init__(message or f"The actor {actor_id} is dead.")

    def __reduce__(self):
        return (type(self), (self.actor_id, str(self), self.cause))


class ActorDiedError(RayActorError):
    """The actor is dead: killed, out of scope, failed in its constructor, or out of restarts."""


class AsyncioActorExit(SystemExit):
    """Raised inside an actor by ``exit_actor()`` (``ray.exceptions.AsyncioActorExit``); not an error
    a caller sees: callers get :class:`ActorDiedError`."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (restarting)."""


class NodeDiedError(RayError):
    """The node running the task was lost."""


class ObjectLostError(RayError):
    """The object's value is gone: every reference was released, or the node holding it was lost."""

    def __init__(self, object_ref_hex: str = "", message: str = "") -> None:
        self.object_ref_hex = object_ref_hex
        super().__init__(message or f"Object {object_ref_hex} is lost: its value no longer exists")

    def __reduce__(self):
        return (ObjectLostError, (self.object_ref_hex, str(self)))


class OwnerDiedError(ObjectLostError):
    """The process that owned the object exited."""


class ObjectStoreFullError(RayError):
    """The object store ran out of space."""


class OutOfMemoryError(RayError):
    """The task was killed for using too much memory."""


class RuntimeEnvSetupError(RayError):
    """The task's runtime_env could not be set up."""


class ClusterStoppedError(RaySystemError):
    """The cluster stopped before the task finished: its budget (``max_cost``) was reached, or its
    nodes could not be started. The message says which, and what to do."""


class SessionLostError(RaySystemError):
    """The driver's session with the cluster ended: the head was lost, stopped or stopped answering,
    or the ObjectRef belongs to a cluster this process has shut down. The message names the cause."""


class CrossLanguageError(RayError):
    """Not used by starburst (Python only); present so ported code that names it still imports."""


__all__ = [
    "RayError",
    "StarburstError",
    "RaySystemError",
    "RayTaskError",
    "TaskError",
    "GetTimeoutError",
    "TaskCancelledError",
    "WorkerCrashedError",
    "NodeDiedError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "AsyncioActorExit",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "RuntimeEnvSetupError",
    "ClusterStoppedError",
    "SessionLostError",
    "CrossLanguageError",
]
