"""Browsing the registry a page at a time (the web UI's reads, and the REST API's lists of
models and versions, paged by the name or number a page ends at): the models a token may see,
filtered and paged; one model's overview (a page of versions with their aliases, holds,
retention and copies per region, the aliases' newest moves, the policy in force); the audit
trail filtered and paged; and a version's small files read into memory (its config.json, its
model card). Every read is bounded by its page, whatever the registry's size.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import UTC, datetime

from registry.errors import InvalidInputError, NotFoundError
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.lifecycle import lock_floor
from registry.ops.queries import resolve
from registry.records import ModelRecord, ModelSummary, VersionState
from registry.refs import validate_name
from registry.reports import (
    AuditPage,
    ModelList,
    ModelOverview,
    ModelPage,
    VersionList,
    VersionRow,
)

MAX_PAGE_SIZE = 500
# The REST API's lists: a page holds this many unless the caller asks for fewer (or more, up to
# MAX_LIST_LIMIT); a client walks the pages with `after`.
LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
# Model names read per query while a scoped token's page fills (names only: cheap).
NAMES_PER_READ = 1000
# Version numbers are 32-bit in the catalog: a larger `after` is refused, not sent to SQL.
MAX_VERSION_NUMBER = 2**31 - 1
TIMELINE_MOVES = 50
# A small file read whole into memory for a page: config.json and README.md of real models are
# a few KiB to a few hundred; anything larger is not shown.
MAX_SMALL_FILE = 4 * 1024 * 1024


def _check_page(number: int, size: int) -> None:
    if number < 1:
        raise InvalidInputError("page numbers start at 1")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"a page holds 1 to {MAX_PAGE_SIZE} entries")


def visible(name: str, patterns: Sequence[str]) -> bool:
    """Whether a token with model `patterns` may see model `name`."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@requires("read")
def model_page(
    ctx: Context,
    *,
    query: str = "",
    patterns: Sequence[str] = ("*",),
    number: int = 1,
    size: int = 50,
) -> ModelPage:
    """Page `number` of the models whose name contains `query` (case-insensitive) among those
    `patterns` let the caller see, by name. A page past the last is empty, not an error: the
    listing shrank while someone paged."""
    _check_page(number, size)
    needle = query.strip().lower()
    names = [
        name
        for name in ctx.catalog.model_names()
        if needle in name.lower() and visible(name, patterns)
    ]
    shown = names[(number - 1) * size : number * size]
    return ModelPage(tuple(ctx.catalog.model_summaries(shown)), number, size, len(names))


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(
            f"limit must be 1 to {MAX_LIST_LIMIT}",
            hint="ask for the next page with `after` (the `next` of the page before)",
        )


@requires("read")
def model_list(
    ctx: Context,
    *,
    after: str | None = None,
    limit: int = LIST_LIMIT,
    patterns: Sequence[str] = ("*",),
) -> ModelList:
    """Up to `limit` models named after `after`, by name, among those `patterns` let the
    caller see, each with its live versions' count, newest number and sizes; and the name
    the next page starts after (None when none is left)."""
    _check_limit(limit)
    if after is not None:
        validate_name(after)  # what `next` gives; anything else is no name to start after
    names: list[str] = []
    cursor = after
    while len(names) <= limit:
        read = ctx.catalog.model_names(after=cursor, limit=NAMES_PER_READ)
        names.extend(name for name in read if visible(name, patterns))
        if len(read) < NAMES_PER_READ:
            break
        cursor = read[-1]
    shown = names[:limit]
    models = tuple(
        ModelRecord(s.name, s.created_at, s.version_count, s.latest, s.total_size, s.stored_size)
        for s in ctx.catalog.model_summaries(shown)
    )
    return ModelList(models, shown[-1] if len(names) > limit else None)


@requires("read")
def version_list(
    ctx: Context, name: str, *, after: int = 0, limit: int = LIST_LIMIT, expired: bool = False
) -> VersionList:
    """Up to `limit` of the model's live versions numbered after `after`, oldest first (with
    `expired`, tombstones too), and the number the next page starts after (None when none is
    left)."""
    _check_limit(limit)
    if not 0 <= after <= MAX_VERSION_NUMBER:
        raise InvalidInputError(
            f"after must be a version number (0 to {MAX_VERSION_NUMBER})",
            hint="give the `next` of the page before, or leave it out for the first page",
        )
    found = ctx.catalog.versions_after(
        validate_name(name), after=after, limit=limit + 1, expired=expired
    )
    shown = tuple(found[:limit])
    return VersionList(shown, shown[-1].number if len(found) > limit else None)


@requires("read")
def model_summary(ctx: Context, name: str) -> ModelSummary:
    """One model's summary: newest version, aliases, stored size, last change."""
    found = ctx.catalog.model_summaries([validate_name(name)])
    if not found:
        raise NotFoundError(f"model {name} does not exist")
    return found[0]


@requires("read")
def model_overview(
    ctx: Context,
    name: str,
    *,
    number: int = 1,
    size: int = 50,
    expired: bool = False,
    now: datetime | None = None,
) -> ModelOverview:
    """A model's page: page `number` of its versions, newest first (with `expired`, the
    tombstones too), each with its aliases, hold, copies per region and what retention decides
    for it now; the newest moves of its aliases; the policy in force."""
    _check_page(number, size)
    summary = model_summary(ctx, name)
    versions, total = ctx.catalog.version_page(
        name, offset=(number - 1) * size, limit=size, expired=expired
    )
    regions = tuple(region.name for region in ctx.settings.regions)
    states = ctx.catalog.version_states(name, [v.number for v in versions], regions=regions)
    policy, source = ctx.catalog.retention(name)
    decided = ctx.catalog.retention_decisions(
        name,
        [v.number for v in versions if not v.expired],
        now=now or datetime.now(UTC),
        locked_for=lock_floor(ctx),
    )
    rows = tuple(
        VersionRow(
            version,
            states.get(version.number, VersionState(version.number, (), None, ())),
            None if version.expired else decided.get(version.number),
        )
        for version in versions
    )
    return ModelOverview(
        summary,
        rows,
        number,
        size,
        total,
        tuple(ctx.catalog.alias_timeline(name, limit=TIMELINE_MOVES)),
        policy,
        source,
        regions,
    )


@requires("read")
def version_row(ctx: Context, ref: str, *, now: datetime | None = None) -> VersionRow:
    """One version with its aliases, hold, copies per region and retention decision."""
    version = resolve(ctx, ref)
    regions = tuple(region.name for region in ctx.settings.regions)
    states = ctx.catalog.version_states(version.name, [version.number], regions=regions)
    decided = ctx.catalog.retention_decisions(
        version.name, [version.number], now=now or datetime.now(UTC), locked_for=lock_floor(ctx)
    )
    return VersionRow(version, states[version.number], decided.get(version.number))


@requires("audit")
def audit_page(
    ctx: Context,
    *,
    subjects: Sequence[str] | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    version: int | None = None,
    before: int | None = None,
    size: int = 50,
) -> AuditPage:
    """A page of the audit trail, newest first, with ids below `before`: entries about one
    of `subjects` (None: any), by `actor`, of `action`, within [`since`, `until`), about
    `version` of the subject."""
    _check_page(1, size)
    for what, text in (("actor", actor), ("action", action)):
        if text is not None:
            # As every text the registry takes: PostgreSQL refuses a NUL (a 503, not a 400).
            check_text(f"the {what} filter", text, limit=256)
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    events = ctx.catalog.audit_page(
        subjects=subjects,
        actor=actor,
        action=action,
        since=since,
        until=until,
        version=version,
        before=before,
        limit=size + 1,
    )
    more = len(events) > size
    shown = tuple(events[:size])
    return AuditPage(shown, shown[-1].id if more and shown else None)


@requires("pull")
def read_small_file(ctx: Context, ref: str, path: str, *, limit: int = MAX_SMALL_FILE) -> bytes:
    """The plaintext of one of a version's files, decrypted in memory (every chunk
    authenticated, the whole checked against its digest): a config or a model card shown on a
    page. Refused above `limit` bytes."""
    from registry.blobstore import BLOB
    from registry.replication import ReadReport

    version = resolve(ctx, ref)
    entry = next((f for f in version.files if f.path == path), None)
    if entry is None:
        raise NotFoundError(f"{version.ref} has no file {path}")
    if entry.size > limit:
        raise InvalidInputError(f"{path} is {entry.size} bytes: too large to show")
    chunks = ctx.replicas.open(
        BLOB,
        entry.digest,
        known=ctx.catalog.key_slots(entry.digest, BLOB),
        size=entry.size,
        what=f"{version.ref}:{path}",
        report=ReadReport(),
    )
    return b"".join(bytes(chunk) for chunk in chunks)
