"""``ray.dag.class_node`` under the Ray alias: ClassNode, ClassMethodNode (defined in :mod:`starburst.dag`)."""

from . import ClassNode, ClassMethodNode

__all__ = ['ClassNode', 'ClassMethodNode']
