"""Storage drivers: where the blob store keeps its opaque, write-once objects."""

from registry.storage.base import Capabilities, Driver, ObjectInfo, validate_object_name
from registry.storage.local import LocalDriver
from registry.storage.memory import MemoryDriver

__all__ = [
    "Capabilities",
    "Driver",
    "LocalDriver",
    "MemoryDriver",
    "ObjectInfo",
    "validate_object_name",
]
