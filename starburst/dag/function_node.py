"""``ray.dag.function_node`` under the Ray alias: FunctionNode (defined in :mod:`starburst.dag`)."""

from . import FunctionNode

__all__ = ['FunctionNode']
