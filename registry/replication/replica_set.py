"""`ReplicaSet`, the one object the service holds of its regions, composed from the per-job
pieces of this package: the regions (`regions`), data keys (`keys`), read-back and repair
(`repair`), writes (`write`) and reads (`read`)."""

from __future__ import annotations

from registry.replication.read import Reads
from registry.replication.write import Writes


class ReplicaSet(Writes, Reads):
    """The regions of a registry, in read preference order."""
