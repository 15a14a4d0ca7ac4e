"""The object store interface."""

from __future__ import annotations

import abc

from ..serialization import Serialized


class ObjectStore(abc.ABC):
    """Holds serialized values by key. Every process of a cluster can reach the same store."""

    url: str

    @abc.abstractmethod
    def put(self, key: str, value: Serialized) -> None:
        """Store ``value`` under ``key``; the object is complete when this returns."""

    @abc.abstractmethod
    def get(self, key: str) -> memoryview:
        """A read-only view of the serialized value (zero-copy where the store allows)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Drop the value; views already handed out stay valid."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Delete every value of this store, and the store itself (at cluster shutdown)."""

    def release_unused(self) -> None:  # noqa: B027 - optional: only a store that keeps memory for reuse has any
        """Give back what the store keeps for reuse and has not used for a while (the head calls
        this about once a second)."""

    def close(self) -> None:  # noqa: B027 - optional: a store with nothing open keeps this no-op
        """Release what the store holds open (not the stored values)."""
