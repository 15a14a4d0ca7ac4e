"""``ray.dag.input_node`` under the Ray alias: InputNode, InputAttributeNode, DAGInputData."""

from . import InputNode, InputAttributeNode, DAGInputData

__all__ = ['InputNode', 'InputAttributeNode', 'DAGInputData']
