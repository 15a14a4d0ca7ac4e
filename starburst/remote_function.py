"""``@remote`` functions: turn a call into a TaskSpec and submit it through the session."""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any, Callable

from . import _runtime, runtime_env
from ._ids import new_id, return_ids
from . import options as _options
from ._proto import starburst_pb2 as pb
from .object_ref import ObjectRef
from .serialization import dumps_function, find_unpicklable, pickle_exception_classes, serialize

DEFAULTS: dict[str, Any] = {"num_cpus": 1, "num_returns": 1, "max_retries": 3, "retry_exceptions": False}


class _Dep:
    """Placeholder for a top-level ObjectRef argument; the executor puts the resolved value here."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return (_Dep, (self.index,))


class RemoteFunction:
    """A function that runs as a task: ``f.remote(*args)`` returns ObjectRef(s) at once."""

    def __init__(self, function: Callable, options: dict[str, Any]) -> None:
        self._function = function
        self._options = _options.validate(dict(options), f"@remote function {function.__qualname__}")
        self._pickled: pb.Function | None = None
        #: (options, client, cluster, job runtime_env, spec template, resolved options, runtime_env
        #: applied per call or None): what every call with the same options shares, built once.
        self._prepared: tuple | None = None
        # As in Ray: a function that yields is a streaming generator unless num_returns says otherwise.
        self._default_returns: Any = "streaming" if inspect.isgeneratorfunction(function) else 1
        functools.update_wrapper(self, function)

    def __getstate__(self) -> dict[str, Any]:
        # Sent inside other tasks' closures: what was prepared here holds this process's session.
        state = self.__dict__.copy()
        state["_prepared"] = None
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._function.__name__
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{name}()', "
            f"try '{name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task; returns an ObjectRef (a list of them when num_returns > 1)."""
        return self._submit(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A DAG node calling this function (``starburst.dag``); run it with ``.execute()``."""
        from .dag import FunctionNode

        return FunctionNode(self, args, kwargs)

    def options(self, **options: Any) -> "_BoundOptions":
        """The same function with some options overridden for the calls made through the result."""
        merged = dict(self._options)
        merged.update(_options.validate(options, f".options() of {self._function.__qualname__}"))
        return _BoundOptions(self, merged)

    def _function_message(self) -> pb.Function:
        if self._pickled is None:
            name = f"{self._function.__module__}.{self._function.__qualname__}"
            try:
                data = dumps_function(self._function)
            except Exception as exc:
                raise TypeError(
                    f"Could not serialize the remote function {name}: {type(exc).__name__}: {exc}. "
                    "Remote functions are sent to the workers with cloudpickle: move objects such as "
                    "locks, open files or connections out of its globals and closure, or create them "
                    "inside the function."
                ) from exc
            code = getattr(self._function, "__code__", None)
            self._pickled = pb.Function(
                id=hashlib.sha256(data).digest(), pickled=data, name=name,
                source_file=code.co_filename if code is not None else "",
            )
        return self._pickled

    def _submit(self, args: tuple, kwargs: dict, opts: dict[str, Any]) -> Any:
        client = _runtime.get_client()
        function = self._function_message()
        template, o, env = self._prepare(client, opts, function)
        task_id = new_id()
        n = o["num_returns"]
        spec = pb.TaskSpec()
        spec.CopyFrom(template)
        spec.task_id = task_id
        spec.return_ids.extend(return_ids(task_id, 1 if spec.generator else max(n, 1)))
        if env is not None:  # directories to ship: looked at again (for changes) per call
            runtime_env.apply(spec, env, client.store)
        _runtime.stamp_caller(spec, client)
        fill_args(client, spec, args, kwargs, self._function.__qualname__)
        refs = client.submit(spec, function, self)
        return shape_result(refs, n, task_id, client)

    def _prepare(self, client: Any, opts: dict[str, Any],
                 function: pb.Function) -> tuple[pb.TaskSpec, dict[str, Any], dict[str, Any] | None]:
        """The part of the spec that calls with ``opts`` share (checked against the cluster once):
        (template, resolved options, a runtime_env to apply per call or None). Built again when the
        options, the session, the cluster or the job's runtime_env change."""
        welcome, job_env = client.welcome, _runtime.job_runtime_env
        prepared = self._prepared
        if (prepared is not None and prepared[0] is opts and prepared[1] is client and prepared[2] is welcome
                and prepared[3] is job_env):
            return prepared[4], prepared[5], prepared[6]
        o = {**DEFAULTS, "num_returns": self._default_returns, **opts}
        check_feasible(client, o, self._function.__qualname__)
        n = o["num_returns"]
        spec = pb.TaskSpec(
            function_id=function.id,
            name=o.get("name") or self._function.__qualname__,
            max_retries=o["max_retries"],
            generator=n if isinstance(n, str) else "",
        )
        spec.resources.cpus = o["num_cpus"]
        spec.resources.gpus = o.get("num_gpus") or 0
        spec.resources.memory = o.get("memory") or 0
        for key, qty in (o.get("resources") or {}).items():
            spec.resources.custom[key] = qty
        if o["retry_exceptions"]:
            spec.retry_exceptions = pickle_exception_classes(o["retry_exceptions"])
        env: dict[str, Any] | None = runtime_env.merge(job_env, o.get("runtime_env"))
        assert env is not None
        if not env.get("working_dir") and not env.get("py_modules"):
            runtime_env.apply(spec, env, client.store)
            env = None
        self._prepared = (opts, client, welcome, job_env, spec, o, env)
        return spec, o, env


def shape_result(refs: list[ObjectRef], n: Any, task_id: bytes, client: Any) -> Any:
    """What .remote() returns: a ref, a list of refs, None, or a generator of refs."""
    if n == "streaming":
        from .generators import ObjectRefGenerator

        return ObjectRefGenerator(task_id, refs[0], client)
    if n == 0:
        return None
    return refs[0] if n in (1, "dynamic") else refs


class _BoundOptions:
    def __init__(self, remote_function: RemoteFunction, options: dict[str, Any]) -> None:
        self._remote_function = remote_function
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._remote_function._submit(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from .dag import FunctionNode

        return FunctionNode(self._remote_function, args, kwargs, self._options)

    def options(self, **options: Any) -> "_BoundOptions":
        merged = dict(self._options)
        merged.update(_options.validate(options, ".options()"))
        return _BoundOptions(self._remote_function, merged)


def check_feasible(client: Any, o: dict[str, Any], what: str) -> None:
    """Refuse at the call site a task no node of the cluster could ever run."""
    welcome = client.welcome
    if welcome is None:
        return
    largest = welcome.largest_node
    asks = {"CPU": (o.get("num_cpus") or 0, largest.cpus), "GPU": (o.get("num_gpus") or 0, largest.gpus)}
    if o.get("memory") and largest.memory:
        asks["memory"] = (o["memory"], largest.memory)
    for name, qty in (o.get("resources") or {}).items():
        asks[name] = (qty, largest.custom.get(name, 0.0))
    for name, (want, have) in asks.items():
        if want > have:
            raise ValueError(
                f"{what} asks for {want:g} {name}, but the largest node of this cluster has {have:g}. "
                f"Lower the request (e.g. .options(num_cpus=...)) or start a cluster with larger nodes."
            )


def fill_args(client: Any, spec: pb.TaskSpec, args: tuple, kwargs: dict, what: str) -> None:
    """Serialize the arguments into ``spec``: top-level refs become dependencies."""
    deps: list[bytes] = []

    def sub(value: Any) -> Any:
        if isinstance(value, ObjectRef):
            deps.append(value._id)
            return _Dep(len(deps) - 1)
        return value

    packed = (tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()})
    try:
        ser = serialize(packed)
    except Exception as exc:
        culprit = _find_bad_argument(args, kwargs)
        raise TypeError(
            f"Could not serialize the {culprit} of {what}: {type(exc).__name__}: {exc}. Arguments are sent "
            "to the workers with cloudpickle; pass something picklable (e.g. a path instead of an open "
            "file, or create the object inside the task)."
        ) from exc
    spec.deps.extend(deps)
    spec.args.CopyFrom(client.value_from_serialized(ser, spec.task_id.hex() + "-args"))


def _find_bad_argument(args: tuple, kwargs: dict) -> str:
    for i, a in enumerate(args):
        if find_unpicklable(a) is not None:
            return f"argument at position {i} ({type(a).__name__})"
    for k, v in kwargs.items():
        if find_unpicklable(v) is not None:
            return f"keyword argument {k!r} ({type(v).__name__})"
    return "arguments"
