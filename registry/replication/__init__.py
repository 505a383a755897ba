"""Copies of the store in several regions: written together, read back, read with fail-over,
and repaired from a good copy. One `BlobStore` per region (its driver and its key provider).

Every region holds byte-identical ciphertext of an object: it is sealed once and the same bytes go
to every region, and a region that lacks an object (or holds a damaged one) gets a copy of another
region's bytes, authenticated chunk by chunk on the way. One data key therefore opens every copy,
each region keeps that key wrapped by its own key-encryption key (its KMS key), and a range one
region cannot serve can be read from the next. A copy counts as verified only after it was read
back and its ciphertext checksum (BLAKE3 of the stored bytes) matched.

A region that is down or hung costs little: reads of remote regions are hedged (a range not
served within the region's latency budget is asked of the next region too, the first good
answer wins), a region that keeps missing its budget is read last for a while
(`registry.replication.health`), and writes skip a region that failed and record its copies as
pending. A region read around is reported in the read's `ReadReport`, whether it failed mid-way
or was already known to be down.

One module per job: `regions` (the region list, claim checks, down and health marks, the states
of a copy), `health` (latency budgets, the breaker, outages), `keys` (an object's data key across
regions), `fanout` (one stream written to several regions, stalled writers dropped), `write`
(`ReplicaSet.replicate`: an object brought to every region, its data key chosen first or
before), `repair` (copies read back and verified, a good copy's bytes streamed out
authenticated), `read` (fail-over and hedged reads, and a pull's read-ahead), and `replica_set`
(`ReplicaSet`, composed from them).
"""

from registry.replication.fanout import Chunks
from registry.replication.read import MAX_SMALL_OBJECT, BlobReader, ReadAhead, ReadReport
from registry.replication.regions import (
    BAD,
    PENDING,
    VERIFIED,
    ClaimPendingError,
    Outcome,
    Region,
    fresh_failure,
)
from registry.replication.replica_set import ReplicaSet
from registry.replication.write import DataKey, Replicated

__all__ = [
    "BAD",
    "MAX_SMALL_OBJECT",
    "PENDING",
    "VERIFIED",
    "BlobReader",
    "Chunks",
    "ClaimPendingError",
    "DataKey",
    "Outcome",
    "ReadAhead",
    "ReadReport",
    "Region",
    "ReplicaSet",
    "Replicated",
    "fresh_failure",
]
