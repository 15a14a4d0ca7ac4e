"""``ray.dag.output_node`` under the Ray alias: MultiOutputNode (defined in :mod:`starburst.dag`)."""

from . import MultiOutputNode

__all__ = ['MultiOutputNode']
