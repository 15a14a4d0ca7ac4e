"""Actors: ``@remote`` classes. Each actor lives in a process of its own on a node; its calls run
there one at a time in submission order (or concurrently: ``max_concurrency``, async methods)."""

from __future__ import annotations

import hashlib
import inspect
import pickle
from typing import Any, NoReturn

from . import _runtime, runtime_env
from . import options as _options
from ._proto import starburst_pb2 as pb
from ._ids import new_id, return_ids
from .remote_function import check_feasible, fill_args, shape_result
from .exceptions import AsyncioActorExit
from .serialization import dumps_function, note_contained_ref

ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "object_store_memory", "accelerator_type",
    "max_concurrency", "max_restarts", "max_task_retries", "max_pending_calls", "name", "namespace",
    "lifetime", "get_if_exists", "runtime_env", "scheduling_strategy", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks", "concurrency_groups",
    "label_selector", "enable_task_events", "allow_out_of_order_execution", "_metadata",
}
_METHOD_OPTIONS = {"num_returns", "name", "concurrency_group", "max_task_retries", "retry_exceptions",
                   "enable_task_events", "_metadata", "tensor_transport"}


def method(*args: Any, **options: Any) -> Any:
    """Options for one actor method: ``@starburst.method(num_returns=2)``."""
    if args:
        raise TypeError("@method takes keyword arguments only, e.g. @method(num_returns=2)")
    _validate_method_options(options, "@method")

    def decorate(fn: Any) -> Any:
        fn.__starburst_method_options__ = options
        return fn

    return decorate


def _validate_method_options(options: dict[str, Any], where: str) -> None:
    _options.reject_unknown(options, _METHOD_OPTIONS, where)
    if "num_returns" in options:
        _options.validate({"num_returns": options["num_returns"]}, where)


def _validate_actor_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    _options.reject_unknown(options, ACTOR_OPTIONS, where)
    task_like = {k: v for k, v in options.items() if k in _options.TASK_OPTIONS}
    _options.validate(task_like, where)
    if options.get("concurrency_groups"):
        raise ValueError(f"{where}: concurrency_groups are not supported by starburst yet")
    for key in ("max_restarts", "max_task_retries"):
        n = options.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise TypeError(f"{key} must be an integer (-1: unlimited), got {n!r}")
        if n is not None and n < -1:
            raise ValueError(f"{key} must be >= -1 (-1: unlimited), got {n}")
    n = options.get("max_concurrency")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"max_concurrency must be an integer >= 1, got {n!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached' (or None), got {lifetime!r}")
    name = options.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if options.get("get_if_exists") and not name:
        raise ValueError("get_if_exists=True needs a name")
    return options


def _method_table(cls: type) -> dict[str, dict[str, Any]]:
    table = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if inspect.isfunction(member) or inspect.ismethod(member):
            opts = dict(getattr(member, "__starburst_method_options__", {}))
            opts["is_async"] = inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
            if "num_returns" not in opts and (inspect.isgeneratorfunction(member)
                                              or inspect.isasyncgenfunction(member)):
                opts["num_returns"] = "streaming"  # as in Ray: a method that yields streams
            table[name] = opts
    table["__ray_terminate__"] = {"num_returns": 1, "is_async": False}
    return table


class ActorClass:
    """A class made remote: ``Cls.remote(*args)`` starts an actor and returns its handle."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _validate_actor_options(dict(options), f"@remote class {cls.__qualname__}")
        self._pickled: pb.Function | None = None
        self._methods = _method_table(cls)
        self._is_async = any(m["is_async"] for m in self._methods.values())
        self._handle_meta = pickle.dumps(
            {"class_name": cls.__name__, "methods": self._methods, "is_async": self._is_async})
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._cls.__name__}()', use "
            f"'{self._cls.__name__}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        """Start an actor; returns its handle at once (the constructor runs in the actor's process)."""
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> "_ActorClassOptions":
        merged = dict(self._options)
        merged.update(options)
        return _ActorClassOptions(self, _validate_actor_options(merged, f".options() of {self._cls.__qualname__}"))

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A DAG node creating this actor (``starburst.dag``)."""
        from .dag import ClassNode

        return ClassNode(self, args, kwargs)

    def _function_message(self) -> pb.Function:
        if self._pickled is None:
            name = f"{self._cls.__module__}.{self._cls.__qualname__}"
            try:
                data = dumps_function(self._cls)
            except Exception as exc:
                raise TypeError(
                    f"Could not serialize the actor class {name}: {type(exc).__name__}: {exc}. It is sent "
                    "to the workers with cloudpickle: create locks, files or connections in __init__."
                ) from exc
            try:
                source_file = inspect.getsourcefile(self._cls) or ""
            except (TypeError, OSError):
                source_file = ""
            self._pickled = pb.Function(id=hashlib.sha256(data).digest(), pickled=data, name=name,
                                        source_file=source_file)
        return self._pickled

    def _create(self, args: tuple, kwargs: dict, o: dict[str, Any]) -> "ActorHandle":
        client = _runtime.get_client()
        function = self._function_message()
        check_feasible(client, o, self._cls.__qualname__)
        is_async = self._is_async
        task_id = new_id()
        spec = pb.TaskSpec(
            task_id=task_id, function_id=function.id, name=f"{self._cls.__name__}.__init__",
            return_ids=return_ids(task_id, 1), actor_id=new_id(), max_retries=0,
            namespace=o.get("namespace") or "",
        )
        spec.resources.cpus = o.get("num_cpus") or 0
        spec.resources.gpus = o.get("num_gpus") or 0
        spec.resources.memory = o.get("memory") or 0
        for key, qty in (o.get("resources") or {}).items():
            spec.resources.custom[key] = qty
        spec.actor.CopyFrom(pb.ActorOptions(
            class_name=self._cls.__name__,
            max_concurrency=o.get("max_concurrency") or (1000 if is_async else 1),
            is_async=is_async, max_restarts=o.get("max_restarts") or 0,
            max_task_retries=o.get("max_task_retries") or 0, name=o.get("name") or "",
            detached=o.get("lifetime") == "detached", handle_meta=self._handle_meta,
            get_if_exists=bool(o.get("get_if_exists")),
        ))
        runtime_env.apply(spec, runtime_env.merge(_runtime.job_runtime_env, o.get("runtime_env")), client.store)
        _runtime.stamp_caller(spec, client)
        fill_args(client, spec, args, kwargs, f"{self._cls.__name__}.__init__")
        if spec.actor.name:
            client.send_function(function, self)
            reply = client.request(pb.ActorRequest(create_named=spec))
            if reply.error:
                raise ValueError(reply.error)
            client.hold(reply.actor_id)
            return ActorHandle(reply.actor_id, reply.handle_meta, client)
        client.submit_creation(spec, function, self)
        return ActorHandle(spec.actor_id, spec.actor.handle_meta, client)


class _ActorClassOptions:
    def __init__(self, actor_class: ActorClass, options: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        return self._actor_class._create(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from .dag import ClassNode

        return ClassNode(self._actor_class, args, kwargs, self._options)


class ActorID:
    def __init__(self, binary: bytes) -> None:
        self._binary = binary

    def hex(self) -> str:
        return self._binary.hex()

    def binary(self) -> bytes:
        return self._binary

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorID) and other._binary == self._binary

    def __hash__(self) -> int:
        return hash(self._binary)

    def __repr__(self) -> str:
        return f"ActorID({self.hex()})"


class ActorHandle:
    """A reference to a running actor: ``handle.method.remote(...)``. Picklable: pass it to tasks
    and other actors. The actor ends when no handle to it is left (unless it is detached)."""

    def __init__(self, actor_id: bytes, meta: bytes, client: Any) -> None:
        # The caller has already counted this handle with the client (hold/incref).
        self._actor_id = ActorID(actor_id)
        self._meta_bytes = meta
        self._meta = pickle.loads(meta)
        self._client = client

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_meta", {}).get("methods", {})
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"'ActorHandle' object for actor {self.__dict__.get('_meta', {}).get('class_name')} "
                             f"has no attribute '{name}'")

    def __del__(self) -> None:
        client = self.__dict__.get("_client")
        if client is not None:
            try:
                client.decref(self._actor_id.binary())
            except Exception:  # noqa: BLE001
                pass

    def __reduce__(self):
        note_contained_ref(self._actor_id.binary())
        return (_rebuild_handle, (self._actor_id.binary(), self._meta_bytes))

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: bytes, meta: bytes) -> ActorHandle:
    client = _runtime.get_client_for_ref()
    if client is not None:
        client.incref(actor_id, borrowed=True)
    return ActorHandle(actor_id, meta, client)


def handle_for(actor_id: bytes, meta: bytes, client: Any) -> ActorHandle:
    """A handle the head already counts for this session (get_actor)."""
    client.hold(actor_id)
    return ActorHandle(actor_id, meta, client)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, options: dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', try "
            f"'object.{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(args, kwargs, self._options)

    def options(self, **options: Any) -> "_ActorMethodOptions":
        _validate_method_options(options, "an actor method's .options()")
        return _ActorMethodOptions(self, {**self._options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A DAG node calling this method (``starburst.dag``)."""
        from .dag import ClassMethodNode

        return ClassMethodNode(self._handle, self._name, args, kwargs)

    def _call(self, args: tuple, kwargs: dict, o: dict[str, Any]) -> Any:
        handle = self._handle
        client = handle._client or _runtime.get_client()
        n = o.get("num_returns", 1)
        generator = n if isinstance(n, str) else ""
        task_id = new_id()
        spec = pb.TaskSpec(
            task_id=task_id, name=f"{handle._meta['class_name']}.{self._name}",
            actor_id=handle._actor_id.binary(), method=self._name, generator=generator,
            return_ids=return_ids(task_id, 1 if generator else max(n, 1)),
        )
        _runtime.stamp_caller(spec, client)
        fill_args(client, spec, args, kwargs, spec.name)
        refs = client.submit(spec, None)
        return shape_result(refs, n, task_id, client)


class _ActorMethodOptions:
    def __init__(self, method: ActorMethod, options: dict[str, Any]) -> None:
        self._method = method
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method._call(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from .dag import ClassMethodNode

        opts = {k: v for k, v in self._options.items() if k != "is_async"}
        return ClassMethodNode(self._method._handle, self._method._name, args, kwargs, opts)


def exit_actor() -> NoReturn:
    """End the actor this runs in, from one of its methods (``ray.actor.exit_actor``).

    An intended exit: the actor is not restarted, whatever its ``max_restarts``. The calling method's
    ref and every later call raise :class:`~starburst.exceptions.ActorDiedError`. ``TypeError``
    outside an actor.
    """
    task = _runtime.current_task()
    if task is None or not task.actor_id:
        raise TypeError("exit_actor() can only be called inside an actor's method")
    raise AsyncioActorExit()


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor; ``ValueError`` when there is none by that name."""
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name (a non-empty string)")
    client = _runtime.get_client()
    ns = namespace if namespace is not None else _runtime.current_namespace(client)
    reply = client.request(pb.ActorRequest(get_named=f"{ns}/{name}"))
    if reply.error:
        raise ValueError(reply.error)
    return handle_for(reply.actor_id, reply.handle_meta, client)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop the actor's process now; its pending calls fail with ActorDiedError. With
    ``no_restart=False`` it is restarted if its ``max_restarts`` allow."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"kill() expects an actor handle, got {type(actor).__name__}; to stop a task "
                         "use starburst.cancel()")
    client = actor._client or _runtime.get_client()
    client.kill_actor(actor._actor_id.binary(), no_restart)
