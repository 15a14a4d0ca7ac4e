"""``ray.dag.dag_node`` under the Ray alias: DAGNode (defined in :mod:`starburst.dag`)."""

from . import DAGNode

__all__ = ['DAGNode']
