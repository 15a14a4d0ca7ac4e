"""Ray's classic DAG API (``ray.dag``): ``.bind()`` builds the graph, ``.execute()`` runs it.

Written the way Ray users write it (``fn.bind``, ``Cls.bind``, ``node.method.bind``,
``with InputNode() as inp``). Runs are counted with files in tmp_path (one line per run), because
tasks run in other processes. Remote functions are local to the tests so that cloudpickle ships them
by value.
"""

from __future__ import annotations

import pathlib
import types

import pytest

from starburst.dag import (
    ClassMethodNode,
    ClassNode,
    DAGNode,
    FunctionNode,
    InputAttributeNode,
    InputNode,
    MultiOutputNode,
)

GET_TIMEOUT = 60


def _runs(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _basic(ray):
    @ray.remote
    def inc(x):
        return x + 1

    @ray.remote
    def double(x):
        return 2 * x

    @ray.remote
    def add(a, b):
        return a + b

    return inc, double, add


def test_chain_and_node_types(cluster):
    ray = cluster
    inc, double, add = _basic(ray)

    first = inc.bind(1)
    dag = double.bind(first)
    assert isinstance(first, FunctionNode) and isinstance(dag, DAGNode)
    assert dag.get_args() == (first,)
    ref = dag.execute()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=GET_TIMEOUT) == 4  # double(inc(1))
    # Keyword arguments, and plain values mixed with nodes.
    assert ray.get(add.bind(a=inc.bind(1), b=10).execute(), timeout=GET_TIMEOUT) == 12
    # A node is not a remote function any more.
    with pytest.raises(AttributeError, match="execute"):
        dag.remote()


def test_upstream_refs_resolve_top_level_but_stay_refs_when_nested(cluster):
    ray = cluster
    inc, _, _ = _basic(ray)

    @ray.remote
    def describe(top, nested):
        import starburst

        return type(top).__name__, type(nested[0]).__name__, starburst.get(nested[0])

    node = inc.bind(41)
    assert ray.get(describe.bind(node, [node]).execute(), timeout=GET_TIMEOUT) == ("int", "ObjectRef", 42)


def test_diamond_runs_shared_node_once_per_execute(cluster, tmp_path):
    ray = cluster
    _, _, add = _basic(ray)
    counter = tmp_path / "source-runs"

    @ray.remote
    def source(path, x):
        with open(path, "a") as f:
            f.write("run\n")
        return x

    @ray.remote
    def times(x, k):
        return x * k

    with InputNode() as inp:
        top = source.bind(str(counter), inp)
        dag = add.bind(times.bind(top, 2), times.bind(top, 3))

    assert ray.get(dag.execute(5), timeout=GET_TIMEOUT) == 25
    assert _runs(counter) == 1
    # Also when the same node feeds one task twice, and a MultiOutputNode lists it again.
    both = MultiOutputNode([add.bind(top, top), top])
    assert ray.get(both.execute(7), timeout=GET_TIMEOUT) == [14, 7]
    assert _runs(counter) == 2
    # A second execute() runs it again, with the new input.
    assert ray.get(dag.execute(1), timeout=GET_TIMEOUT) == 5
    assert _runs(counter) == 3


def test_input_node_positional_index_key_and_attribute(cluster):
    ray = cluster
    inc, _, add = _basic(ray)

    @ray.remote
    def echo(*args, **kwargs):
        return args, kwargs

    # The input itself: the single positional argument of execute().
    with InputNode() as inp:
        whole = inc.bind(inp)
    assert ray.get(whole.execute(9), timeout=GET_TIMEOUT) == 10

    # Several arguments: inp[i] is the i-th positional one, inp["k"] / inp.k the keyword k.
    with InputNode() as inp:
        parts = echo.bind(inp[0], inp[1], key=inp["key"], attr=inp.attr)
    assert isinstance(inp[0], InputAttributeNode) and inp[0] is inp[0]
    assert ray.get(parts.execute(1, 2, key="k", attr="a"), timeout=GET_TIMEOUT) == (
        (1, 2), {"key": "k", "attr": "a"}
    )

    # One argument: indexing and attributes apply to that object.
    with InputNode() as inp:
        index_dag = add.bind(inp[0], inp[1])
        key_dag = add.bind(inp["a"], inp["b"])
        attr_dag = add.bind(inp.a, inp.b)
    assert ray.get(index_dag.execute([3, 4]), timeout=GET_TIMEOUT) == 7
    assert ray.get(index_dag.execute(3, 4), timeout=GET_TIMEOUT) == 7
    assert ray.get(key_dag.execute({"a": 1, "b": 2}), timeout=GET_TIMEOUT) == 3
    assert ray.get(key_dag.execute(a=5, b=6), timeout=GET_TIMEOUT) == 11
    assert ray.get(attr_dag.execute(types.SimpleNamespace(a=10, b=20)), timeout=GET_TIMEOUT) == 30
    assert ray.get(attr_dag.execute(a=1, b=1), timeout=GET_TIMEOUT) == 2


def test_one_input_node_per_dag(cluster):
    ray = cluster
    _, _, add = _basic(ray)
    with pytest.raises(AssertionError, match="one unique InputNode"):
        add.bind(InputNode(), InputNode()).execute(1)


def test_multi_output_node(cluster):
    ray = cluster
    inc, double, _ = _basic(ray)

    with InputNode() as inp:
        dag = MultiOutputNode([inc.bind(inp), double.bind(inp), inp])
    out = dag.execute(5)
    assert isinstance(out, list) and len(out) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in out[:2])
    assert ray.get(out[:2], timeout=GET_TIMEOUT) == [6, 10]
    assert out[2] == 5  # the input itself, as given


def test_execute_twice_with_different_inputs(cluster):
    ray = cluster
    inc, double, add = _basic(ray)

    with InputNode() as inp:
        dag = add.bind(double.bind(inp.x), inc.bind(inp.y))
    first = dag.execute(x=1, y=1)
    second = dag.execute(x=10, y=100)
    assert ray.get([first, second], timeout=GET_TIMEOUT) == [4, 121]
    assert ray.get(dag.execute(x=0, y=0), timeout=GET_TIMEOUT) == 1


def test_actor_class_and_method_nodes(cluster, tmp_path):
    ray = cluster
    inc, _, add = _basic(ray)
    created = tmp_path / "created"

    @ray.remote
    class Counter:
        def __init__(self, path, start):
            with open(path, "a") as f:
                f.write("init\n")
            self.value = start

        def add(self, x):
            self.value += x
            return self.value

        def get(self):
            return self.value

    counter = Counter.bind(str(created), inc.bind(9))  # the constructor's argument is a node too
    assert isinstance(counter, ClassNode)
    with InputNode() as inp:
        step = counter.add.bind(inc.bind(inp))
    assert isinstance(step, ClassMethodNode) and step.get_method_name() == "add"

    assert ray.get(step.execute(1), timeout=GET_TIMEOUT) == 12  # 10 + inc(1)
    assert ray.get(step.execute(2), timeout=GET_TIMEOUT) == 15  # the same actor, reused
    assert _runs(created) == 1
    handle = counter.execute()
    assert isinstance(handle, ray.ActorHandle)
    assert handle is counter.execute()
    assert ray.get(handle.get.remote(), timeout=GET_TIMEOUT) == 15

    # Ray's documented example: calls bound on an actor run, in bind order, before later ones.
    a1 = Counter.bind(str(created), 10)
    assert ray.get(a1.get.bind().execute(), timeout=GET_TIMEOUT) == 10
    a2 = Counter.bind(str(created), 10)
    a1.add.bind(2)
    a1.add.bind(4)
    a2.add.bind(6)
    dag = add.bind(a1.get.bind(), a2.get.bind())
    assert ray.get(dag.execute(), timeout=GET_TIMEOUT) == 32  # (10 + 2 + 4) + (10 + 6)

    # A method bound on an existing actor's handle.
    with InputNode() as inp:
        on_handle = handle.add.bind(inp)
    assert ray.get(on_handle.execute(100), timeout=GET_TIMEOUT) == 115

    # An actor created once cannot take the DAG's input; unknown methods are refused at once.
    with InputNode() as inp:
        with pytest.raises(ValueError, match="InputNode"):
            Counter.bind(str(created), inp)
    with pytest.raises(AttributeError, match="no method 'missing'"):
        counter.missing.bind()


def test_options_before_bind(cluster):
    ray = cluster

    @ray.remote
    def pair(x):
        return x, -x

    @ray.remote
    class Store:
        def __init__(self, value):
            self.value = value

        def both(self):
            return self.value, self.value * 2

    refs = pair.options(num_returns=2).bind(3).execute()
    assert isinstance(refs, list) and len(refs) == 2
    assert ray.get(refs, timeout=GET_TIMEOUT) == [3, -3]
    assert pair.options(num_returns=2).bind(1).get_options()["num_returns"] == 2

    store = Store.options(name="dag-store").bind(7)
    handle = store.execute()
    assert ray.get(ray.get_actor("dag-store").both.remote(), timeout=GET_TIMEOUT) == (7, 14)

    refs = store.both.options(num_returns=2).bind().execute()
    assert ray.get(refs, timeout=GET_TIMEOUT) == [7, 14]
    refs = handle.both.options(num_returns=2).bind().execute()
    assert ray.get(refs, timeout=GET_TIMEOUT) == [7, 14]


def test_errors_propagate(cluster):
    ray = cluster
    inc, _, _ = _basic(ray)

    class PipelineError(Exception):
        pass

    @ray.remote
    def boom(x):
        raise PipelineError(f"bad input {x}")

    with InputNode() as inp:
        dag = inc.bind(boom.bind(inp))
    with pytest.raises(PipelineError) as info:
        ray.get(dag.execute(3), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert "bad input 3" in str(info.value)

    @ray.remote
    class Fragile:
        def check(self, x):
            if x < 0:
                raise PipelineError("negative")
            return x

    with InputNode() as inp:
        checked = Fragile.bind().check.bind(inp)
    assert ray.get(checked.execute(1), timeout=GET_TIMEOUT) == 1
    with pytest.raises(PipelineError, match="negative") as info:
        ray.get(checked.execute(-1), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
