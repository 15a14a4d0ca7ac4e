"""Ray's classic DAG API (``ray.dag``): build a graph of tasks and actor calls lazily with
``.bind()``, then run it with ``dag.execute(...)``.

    from starburst.dag import InputNode, MultiOutputNode

    with InputNode() as inp:
        dag = add.bind(double.bind(inp[0]), inp.y)
    starburst.get(dag.execute(3, y=4))   # add(double(3), 4) == 10

What a node stands for when the DAG runs:

* ``fn.bind(*args, **kwargs)`` -> :class:`FunctionNode`: one ``fn.remote(...)`` task; its value is
  the ObjectRef(s) that call returns.
* ``Cls.bind(*args)`` -> :class:`ClassNode`: the actor ``Cls.remote(...)``. It is created the first
  time the node runs and reused by every later ``execute()`` (the handle is kept on the node), so
  its constructor arguments cannot depend on the DAG's input.
* ``class_node.method.bind(...)`` -> :class:`ClassMethodNode`: a call of that actor's method. Calls
  bound on one ClassNode are submitted in the order they were bound (a call also runs the calls
  bound before it on that node), as in Ray. ``handle.method.bind(...)`` binds a call on an actor
  that already exists.
* :class:`InputNode` is the value given to ``execute()``: the single positional argument itself, or
  (several arguments / keyword arguments) an object from which ``inp[i]`` picks the i-th positional
  argument and ``inp["k"]`` / ``inp.k`` the keyword argument ``k``. With a single argument,
  ``inp[key]`` indexes it and ``inp.attr`` reads its attribute (:class:`InputAttributeNode`).
* :class:`MultiOutputNode` ``([...])``: several outputs; ``execute()`` returns a list.

A node given as an argument of another node stands for its result: an upstream task's ObjectRef is
passed as a top-level task argument, so it is resolved (to the value) before the downstream task
runs; nodes nested in lists, tuples or dicts become nested ObjectRefs, which are not resolved. Every
node runs at most once per ``execute()``, however many nodes use it.

Running a DAG goes through the public API only (``.remote``/``.options`` of remote functions, actor
classes and actor methods). ``.bind`` itself is provided by those classes.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

__all__ = [
    "DAGNode",
    "FunctionNode",
    "ClassNode",
    "ClassMethodNode",
    "InputNode",
    "InputAttributeNode",
    "MultiOutputNode",
    "DAGInputData",
]

_actor_creation_lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# Finding and replacing nodes inside argument values


def _iter_nodes(value: Any) -> Iterator["DAGNode"]:
    """The DAGNodes in ``value``: itself, or found inside (nested) lists, tuples and dicts."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, DAGNode):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))


def _substitute(value: Any, results: dict["DAGNode", Any]) -> Any:
    """``value`` with each DAGNode replaced by its result (containers are copied, never mutated)."""
    if isinstance(value, DAGNode):
        return results[value]
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    if isinstance(value, tuple):
        items = [_substitute(v, results) for v in value]
        if type(value) is tuple:
            return tuple(items)
        if hasattr(value, "_make"):  # a namedtuple
            return value._make(items)
        return tuple(items)
    return value


# --------------------------------------------------------------------------------------------
# Base class


class DAGNode:
    """A node of a lazily built task graph: bound arguments and options; :meth:`execute` runs the
    graph that ends here."""

    def __init__(self, args: tuple = (), kwargs: dict | None = None, options: dict | None = None) -> None:
        self._bound_args: tuple = tuple(args)
        self._bound_kwargs: dict[str, Any] = dict(kwargs or {})
        self._bound_options: dict[str, Any] = dict(options or {})

    # -- introspection (Ray's names) ---------------------------------------------------------

    def get_args(self) -> tuple:
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        return dict(self._bound_kwargs)

    def get_options(self) -> dict[str, Any]:
        return dict(self._bound_options)

    def get_stable_uuid(self) -> str:
        return format(id(self), "x")

    def _upstream(self) -> list["DAGNode"]:
        """The nodes that must have run before this one (each once, in order)."""
        found: list[DAGNode] = []
        seen: set[int] = set()
        for value in (self._bound_args, self._bound_kwargs):
            for node in _iter_nodes(value):
                if id(node) not in seen:
                    seen.add(id(node))
                    found.append(node)
        return found

    # -- execution ---------------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the graph that ends at this node, with ``args``/``kwargs`` as the InputNode's value.

        Returns at once (the tasks run in the cluster): an ObjectRef for a function or method
        node, an actor handle for a ClassNode, a list for a MultiOutputNode."""
        order = _topological_order(self)
        inputs = [n for n in order if isinstance(n, InputNode)]
        if len(inputs) > 1:
            raise AssertionError("Each DAG should only have one unique InputNode.")
        run = _Run(args, kwargs)
        for node in order:
            run.results[node] = node._execute_impl(run)
        return run.results[self]

    def _execute_impl(self, run: "_Run") -> Any:
        raise NotImplementedError

    def _resolved_args(self, run: "_Run") -> tuple[tuple, dict[str, Any]]:
        return (
            tuple(_substitute(a, run.results) for a in self._bound_args),
            {k: _substitute(v, run.results) for k, v in self._bound_kwargs.items()},
        )

    # -- helpful errors ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name == "remote":
            raise AttributeError(
                f".remote() cannot be used on a DAG node ({type(self).__name__}); "
                "run the DAG with .execute()"
            )
        if name == "bind":
            raise AttributeError(f".bind() cannot be used again on a DAG node ({type(self).__name__})")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        return ""


class _Run:
    """One execute(): its input and the result of every node run so far."""

    __slots__ = ("args", "kwargs", "results")

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.results: dict[DAGNode, Any] = {}


def _topological_order(root: DAGNode) -> list[DAGNode]:
    """Every node the root depends on, each once, upstream before downstream (no recursion, so deep
    chains are fine); raises on a cycle."""
    order: list[DAGNode] = []
    done: set[int] = set()
    active: set[int] = set()
    stack: list[tuple[DAGNode, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            active.discard(id(node))
            done.add(id(node))
            order.append(node)
            continue
        if id(node) in done:
            continue
        if id(node) in active:
            raise ValueError(f"the DAG has a cycle through {node!r}")
        active.add(id(node))
        stack.append((node, True))
        for dep in reversed(node._upstream()):
            if id(dep) not in done:
                if id(dep) in active:
                    raise ValueError(f"the DAG has a cycle through {dep!r}")
                stack.append((dep, False))
    return order


def _depends_on_input(node: DAGNode) -> bool:
    return any(isinstance(n, (InputNode, InputAttributeNode)) for n in _topological_order(node))


def _name_of(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


# --------------------------------------------------------------------------------------------
# Tasks


class FunctionNode(DAGNode):
    """A task: ``remote_function.bind(*args, **kwargs)`` (after ``.options(...)`` if given)."""

    def __init__(self, remote_function: Any, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        self._body = remote_function
        super().__init__(args, kwargs, options)

    def _execute_impl(self, run: _Run) -> Any:
        args, kwargs = self._resolved_args(run)
        submit = self._body.options(**self._bound_options) if self._bound_options else self._body
        return submit.remote(*args, **kwargs)

    def _describe(self) -> str:
        return _name_of(self._body)


# --------------------------------------------------------------------------------------------
# Actors


class ClassNode(DAGNode):
    """An actor: ``ActorClass.bind(*args, **kwargs)``. Created on the first execute() and reused
    afterwards; ``class_node.method.bind(...)`` binds a call of one of its methods."""

    def __init__(self, actor_class: Any, args: tuple, kwargs: dict, options: dict | None = None) -> None:
        self._body = actor_class
        self._handle: Any = None
        self._last_call: ClassMethodNode | None = None
        super().__init__(args, kwargs, options)
        if _depends_on_input(self):
            raise ValueError(
                f"{_name_of(actor_class)}.bind(): the arguments of an actor's constructor cannot depend "
                "on the DAG's InputNode: the actor is created once and reused by every execute(); pass "
                "the input to a method instead (e.g. actor.method.bind(inp))"
            )

    def _upstream(self) -> list[DAGNode]:
        # Once the actor exists its constructor's arguments are not needed again.
        return [] if self._handle is not None else super()._upstream()

    def _execute_impl(self, run: _Run) -> Any:
        with _actor_creation_lock:
            if self._handle is None:
                args, kwargs = self._resolved_args(run)
                create = self._body.options(**self._bound_options) if self._bound_options else self._body
                self._handle = create.remote(*args, **kwargs)
            return self._handle

    def __getattr__(self, name: str) -> Any:
        body = self.__dict__.get("_body")
        methods = _method_names(body)  # None: this actor class does not tell
        if body is None or name.startswith("__"):
            raise AttributeError(f"'ClassNode' object has no attribute {name!r}")
        if methods is not None and name in methods:
            return _UnboundClassMethod(self, name, {})
        if name in ("remote", "bind") or name.startswith("_"):
            return super().__getattr__(name)
        if methods is not None:
            raise AttributeError(
                f"actor class {_name_of(body)} has no method {name!r} (a call is bound in a DAG as "
                f"{_name_of(body)}.bind(...).method.bind(...))"
            )
        return _UnboundClassMethod(self, name, {})

    def _describe(self) -> str:
        return _name_of(self._body)


def _method_names(actor_class: Any) -> frozenset[str] | None:
    """The method names of an actor class, or None when it does not tell."""
    cls = getattr(actor_class, "_cls", None) if actor_class is not None else None
    if not isinstance(cls, type):
        return None
    return frozenset(n for n in dir(cls) if callable(getattr(cls, n, None))
                     and (not n.startswith("__") or n == "__call__"))


class _UnboundClassMethod:
    """``class_node.method``: ``.bind(...)`` makes the call node; ``.options(...)`` sets its options."""

    def __init__(self, class_node: ClassNode, method_name: str, options: dict[str, Any]) -> None:
        self._class_node = class_node
        self._method_name = method_name
        self._options = options

    def options(self, **options: Any) -> "_UnboundClassMethod":
        return _UnboundClassMethod(self._class_node, self._method_name, {**self._options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> "ClassMethodNode":
        node = ClassMethodNode(self._class_node, self._method_name, args, kwargs, self._options,
                               _previous_call=self._class_node._last_call)
        self._class_node._last_call = node
        return node

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError(
            f".remote() cannot be used on a method of a ClassNode; use .bind() to add the call "
            f"{self._method_name}() to the DAG"
        )

    def __repr__(self) -> str:
        return f"<unbound DAG method {_name_of(self._class_node._body)}.{self._method_name}>"


class ClassMethodNode(DAGNode):
    """A call of an actor's method. ``actor`` is a :class:`ClassNode` or an existing actor handle."""

    def __init__(
        self,
        actor: Any,
        method_name: str,
        args: tuple,
        kwargs: dict,
        options: dict | None = None,
        *,
        _previous_call: "ClassMethodNode | None" = None,
    ) -> None:
        self._actor = actor
        self._method_name = method_name
        # Calls bound earlier on the same ClassNode are submitted first (actors run calls in order).
        self._previous_call = _previous_call
        super().__init__(args, kwargs, options)

    def get_method_name(self) -> str:
        return self._method_name

    def _upstream(self) -> list[DAGNode]:
        first = [n for n in (self._actor, self._previous_call) if isinstance(n, DAGNode)]
        return first + [n for n in super()._upstream() if all(n is not f for f in first)]

    def _execute_impl(self, run: _Run) -> Any:
        handle = run.results[self._actor] if isinstance(self._actor, DAGNode) else self._actor
        args, kwargs = self._resolved_args(run)
        method = getattr(handle, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        return method.remote(*args, **kwargs)

    def _describe(self) -> str:
        owner = self._actor._describe() if isinstance(self._actor, DAGNode) else repr(self._actor)
        return f"{owner}.{self._method_name}"


# --------------------------------------------------------------------------------------------
# Input and output


class DAGInputData:
    """The InputNode's value when execute() got several arguments or keyword arguments:
    ``data[i]`` is the i-th positional argument, ``data["k"]`` the keyword argument ``k``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = list(args)
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            return self._args[key]
        if isinstance(key, str):
            return self._kwargs[key]
        raise ValueError("access the DAG's input with an int index or a str key")

    def __repr__(self) -> str:
        return f"DAGInputData(args={self._args!r}, kwargs={self._kwargs!r})"


class InputNode(DAGNode):
    """The DAG's input, given to ``execute()``; use it as ``with InputNode() as inp:``.

    ``inp`` itself is the single positional argument of execute() (or a :class:`DAGInputData` when
    there are several); ``inp[0]``, ``inp["key"]`` and ``inp.attr`` pick parts of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # input_type is accepted (Ray uses it for Gradio visualisation) and ignored.
        kwargs.pop("input_type", None)
        if args or kwargs:
            raise ValueError("InputNode takes no arguments: give the input to dag.execute(...)")
        self._attribute_nodes: dict[tuple[str, Any], InputAttributeNode] = {}
        super().__init__()

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _execute_impl(self, run: _Run) -> Any:
        if len(run.args) == 1 and not run.kwargs:
            return run.args[0]
        return DAGInputData(*run.args, **run.kwargs)

    def _attribute(self, key: Any, accessor: str) -> "InputAttributeNode":
        cache = self.__dict__.setdefault("_attribute_nodes", {})
        node = cache.get((accessor, key))
        if node is None:
            node = cache[(accessor, key)] = InputAttributeNode(self, key, accessor)
        return node

    def __getitem__(self, key: int | str) -> "InputAttributeNode":
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            raise TypeError(f"index the DAG's input with an int or a str, not {type(key).__name__}")
        return self._attribute(key, "__getitem__")

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_") or name in ("remote", "bind"):
            return super().__getattr__(name)
        return self._attribute(name, "__getattr__")

    def _describe(self) -> str:
        return ""


class InputAttributeNode(DAGNode):
    """A part of the DAG's input: ``inp[0]``, ``inp["key"]`` or ``inp.attr``."""

    def __init__(self, input_node: InputNode, key: int | str, accessor: str) -> None:
        self._input_node = input_node
        self._key = key
        self._accessor = accessor
        super().__init__()

    def _upstream(self) -> list[DAGNode]:
        return [self._input_node]

    def _execute_impl(self, run: _Run) -> Any:
        value = run.results[self._input_node]
        if isinstance(value, DAGInputData) or self._accessor == "__getitem__":
            return value[self._key]
        return getattr(value, str(self._key))

    def _describe(self) -> str:
        return f"[{self._key!r}]" if self._accessor == "__getitem__" else f".{self._key}"


class MultiOutputNode(DAGNode):
    """Several outputs: ``MultiOutputNode([a, b]).execute()`` returns ``[a's ref, b's ref]``."""

    def __init__(self, outputs: list | tuple, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise ValueError("MultiOutputNode takes one argument: the list of output nodes")
        if not isinstance(outputs, (list, tuple)):
            raise TypeError(f"MultiOutputNode needs a list of nodes, got {type(outputs).__name__}")
        super().__init__((list(outputs),))

    def _execute_impl(self, run: _Run) -> list:
        return _substitute(self._bound_args[0], run.results)

    def _describe(self) -> str:
        return ", ".join(repr(o) for o in self._bound_args[0])


# --------------------------------------------------------------------------------------------
# .bind on the API classes
