"""Tags: add one to a version or remove it (promoter; audited in the catalog's transaction), list
a version's tags, and the versions that carry a tag.
"""

from __future__ import annotations

from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.journaling import journaled
from registry.ops.queries import resolve
from registry.records import TagRecord, VersionRecord
from registry.refs import validate_name, validate_tag
from registry.reports import TagChange


@requires("tag")
@journaled
def add_tag(ctx: Context, ref: str, tag: str) -> TagChange:
    """Tag the version REF resolves to with TAG; a tag it already has changes nothing (and
    writes no audit entry)."""
    validate_tag(tag)
    version = resolve(ctx, ref)
    record, added = ctx.catalog.add_tag(version.name, version.number, tag, actor=ctx.actor)
    return TagChange(record, added)


@requires("tag")
@journaled
def remove_tag(ctx: Context, ref: str, tag: str) -> TagChange:
    """Remove TAG from the version REF resolves to (NotFoundError when it has no such tag)."""
    validate_tag(tag)
    version = resolve(ctx, ref)
    record = ctx.catalog.remove_tag(version.name, version.number, tag, actor=ctx.actor)
    return TagChange(record, True)


@requires("read")
def tags(ctx: Context, ref: str) -> list[TagRecord]:
    """The tags of the version REF resolves to, by tag, with who added each and when."""
    version = resolve(ctx, ref)
    return ctx.reads.version_tags(version.name, version.number)


@requires("read")
def tagged(
    ctx: Context, tag: str, *, name: str | None = None, expired: bool = False
) -> list[VersionRecord]:
    """The versions tagged TAG, of every model or of model `name`, by model and number (live
    ones; with `expired`, tombstones too)."""
    validate_tag(tag)
    if name is not None:
        validate_name(name)
    return ctx.catalog.tagged(tag, name=name, expired=expired)
