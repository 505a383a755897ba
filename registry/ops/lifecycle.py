"""Retention and deletion: a model's retention rule, what it would expire now, and the deletion
of a version (a tombstone; gc reclaims its objects).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.blobstore import MANIFEST
from registry.errors import (
    InvalidInputError,
    NotFoundError,
    RetentionError,
)
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.copies import region_locks, regions_ready
from registry.ops.journaling import journaled
from registry.ops.queries import models, resolve
from registry.records import (
    DEFAULT_POLICY,
    VersionRecord,
)
from registry.refs import (
    parse_reference,
    validate_name,
)
from registry.retention import (
    Decision,
    Policy,
    format_duration,
    parse_duration,
)


@requires("retention")
@journaled
def set_retention(
    ctx: Context,
    name: str | None,
    *,
    keep_last: int | None = None,
    keep_within: str | None = None,
    keep_demoted_for: str | None = None,
    clear: bool = False,
) -> Policy:
    """Set the retention policy of model `name` (None: the registry-wide default). A
    `keep_within` shorter than the store's Object Lock minimum is refused: the registry
    could not delete those versions anyway, and saying otherwise would mislead."""
    if keep_last is None and keep_within is None and keep_demoted_for is None and not clear:
        raise InvalidInputError(
            "no retention rule given",
            hint="give --keep-last, --keep-within or --keep-demoted-for, or --clear to "
            "remove the policy (keep everything)",
        )
    policy = Policy(
        keep_last,
        None if keep_within is None else parse_duration(keep_within),
        None if keep_demoted_for is None else parse_duration(keep_demoted_for),
    )
    floor = lock_floor(ctx)
    if floor is not None and policy.keep_within is not None and policy.keep_within < floor:
        raise RetentionError(
            f"keep-within {keep_within} is below the store's Object Lock minimum "
            f"{format_duration(floor)}",
            hint=f"use --keep-within {format_duration(floor)} or more",
        )
    ctx.catalog.set_retention(
        DEFAULT_POLICY if name is None else validate_name(name), policy, actor=ctx.actor
    )
    return policy


@requires("read")
def retention(ctx: Context, name: str) -> tuple[Policy, str]:
    """The policy in force for model `name` and its source (the model, "*", or "none")."""
    ctx.catalog.versions(validate_name(name))  # NotFoundError for an unknown model
    return ctx.catalog.retention(name)


@requires("read")
def plan_retention(
    ctx: Context, name: str | None = None, *, now: datetime | None = None
) -> list[tuple[str, Policy, list[Decision]]]:
    """Dry run: for each model (or `name`), which versions its policy keeps and why."""
    moment = now or datetime.now(UTC)
    names = [validate_name(name)] if name is not None else [m.name for m in models(ctx)]
    found = []
    for model in names:
        policy, decisions = ctx.catalog.retention_plan(
            model, now=moment, locked_for=lock_floor(ctx)
        )
        found.append((model, policy, decisions))
    return found


def lock_floor(ctx: Context) -> timedelta | None:
    """The longest Object Lock minimum among the regions that lock (None: none do)."""
    days = [r.store.retention_days for r in ctx.settings.regions if r.store.kind == "s3"]
    return timedelta(days=max(days)) if days else None


@requires("delete")
@journaled
def delete(ctx: Context, ref: str, *, reason: str, dry_run: bool = False) -> VersionRecord:
    """Delete one version outside the policy (admin): it becomes a tombstone, still in the
    audit trail, and gc sweeps its objects once nothing else needs them. Refused while an
    alias, a legal hold, an Object Lock or a retention rule keeps it. `dry_run`: every check,
    no change (the CLI asks for confirmation only of a delete that would go through)."""
    if not reason.strip():
        raise InvalidInputError("deleting a version needs a reason", hint="pass --reason TEXT")
    check_text("reason", reason, limit=4096)
    version = resolve(ctx, ref)
    regions_ready(ctx)
    for region, lock in region_locks(ctx):
        name = region.store.object_name(MANIFEST, version.digest)
        try:
            retention = lock.retention(name)
        except NotFoundError:
            continue
        if retention is not None and retention.active():
            raise RetentionError(
                f"{version.ref} is under Object Lock ({retention.mode}) until "
                f"{retention.until:%Y-%m-%d %H:%M} UTC in region {region.name}",
                hint="it can be deleted once the lock has expired",
            )
    return ctx.catalog.delete_version(
        parse_reference(version.ref),
        reason=reason,
        actor=ctx.actor,
        locked_for=lock_floor(ctx),
        dry_run=dry_run,
    )
