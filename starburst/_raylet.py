"""``ray._raylet`` under the Ray alias: the names Ray programs import from it."""

from __future__ import annotations

from .actor import ActorID
from .generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .object_ref import ObjectRef

#: Ray's older name for the streaming generator.
StreamingObjectRefGenerator = ObjectRefGenerator

__all__ = ["ActorID", "DynamicObjectRefGenerator", "ObjectRef", "ObjectRefGenerator", "StreamingObjectRefGenerator"]
