"""Stored objects by id, for object URLs (`/v1/objects/{id}`, what HTTP caches and P2P
distributors share across a fleet; the key broker's answer names each object's id,
`serving.object_ids`): the object an id names, found for a caller allowed to read a model that
references it. An object no model of the caller's references is refused exactly as
a missing one is, so an id tells a token nothing about models it may not read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from registry.blobstore import BLOB, MANIFEST, stored_name
from registry.errors import InvalidInputError, NotFoundError
from registry.ops.access import requires
from registry.ops.browse import visible
from registry.ops.context import Context
from registry.ops.queries import resolve
from registry.ops.serving import sealed_size
from registry.reports import SealedObject

OBJECT_ID = re.compile(r"[0-9a-f]{64}")


@requires("read-sealed")
def stored_object(ctx: Context, object_id: str, *, models: Sequence[str] = ("*",)) -> SealedObject:
    """The object `object_id` names, as a version of a model matching one of `models` (a
    token's patterns) references it: what ranged reads of it address. NotFoundError when it
    is not stored, no live version references it, or none of those is of such a model."""
    if OBJECT_ID.fullmatch(object_id) is None:
        raise InvalidInputError(
            f"invalid object id {object_id[:80]!r}",
            hint="an object id is 64 lowercase hex digits, as the key broker's answer names it",
        )
    found = ctx.catalog.stored_object(
        stored_name(BLOB, object_id), stored_name(MANIFEST, object_id)
    )
    readable = (
        []
        if found is None
        else [(name, number) for name, number in found.versions if visible(name, models)]
    )
    if found is None or not readable:
        raise NotFoundError(
            f"no object {object_id}",
            hint="take object ids from the key broker's answer (POST /v1/keys) for a version "
            "this token may read",
        )
    name, number = readable[0]
    version = resolve(ctx, f"{name}@{number}")
    size = found.sealed_size
    if size is None:
        size = sealed_size(ctx, found.kind, found.digest)
    return SealedObject(version, found.kind, found.digest, size)
