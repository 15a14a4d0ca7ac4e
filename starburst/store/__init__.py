"""Object stores: where values above the inline threshold live. Only their keys cross gRPC.

``open_store(url)`` picks the implementation from the URL: ``file://`` is the local node's
memory-backed directory (shared by every process on the machine); ``s3://bucket/prefix`` is the
Fargate clusters' store (parallel multipart upload, ranged parallel download, a read cache).
"""

from __future__ import annotations

from .._proto import starburst_pb2 as pb
from ..serialization import Serialized, serialize
from .base import ObjectStore
from .local import LocalStore


def open_store(url: str) -> ObjectStore:
    if url.startswith("file://"):
        return LocalStore(url[len("file://") :])
    if url.startswith("s3://"):
        from .s3 import S3Store  # lazy: only S3 clusters pay for importing botocore

        return S3Store(url)
    raise ValueError(f"unsupported object store URL {url!r} (expected file://... or s3://bucket/prefix)")


def pack_value(ser: Serialized, key: str, store: ObjectStore, inline_threshold: int) -> pb.Value:
    """A Value message for ``ser``: inline when small, else written to ``store`` under ``key``."""
    size = ser.size
    if size >= inline_threshold:
        store.put(key, ser)
        value = pb.Value(key=key, size=size)
    else:
        value = pb.Value(inline=ser.to_bytes(), size=size)
    value.contained.extend(ser.contained)
    return value


def store_usage(store: ObjectStore | None) -> pb.StoreUsage | None:
    """The S3 requests and bytes of ``store`` since the last call, for the head's cost meter; None
    when there are none (or the store isn't S3)."""
    take = getattr(store, "take_usage", None)
    if take is None:
        return None
    usage = take()
    return pb.StoreUsage(**usage) if any(usage.values()) else None


def error_value(error: BaseException) -> pb.Value:
    """A Value carrying an exception (always inline: errors are small)."""
    data = serialize(error).to_bytes()
    return pb.Value(inline=data, size=len(data), is_error=True)


def load_value(value: pb.Value, store: ObjectStore):
    """Deserialize a Value message (zero-copy from the store for large ones)."""
    from ..serialization import deserialize

    if value.WhichOneof("where") == "key":
        return deserialize(store.get(value.key))
    return deserialize(value.inline)


__all__ = ["ObjectStore", "LocalStore", "open_store", "pack_value", "load_value", "error_value", "store_usage"]
