"""Aliases: promote, roll back, protect, and read an alias's place and history. A move is
atomic in the catalog, extends the version's Object Lock and is announced to the webhooks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from registry.errors import (
    InvalidInputError,
    RegistryError,
)
from registry.ops.access import may_move_protected, requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.events import deliver_pending
from registry.ops.gc import extend_locks
from registry.ops.journaling import journaled
from registry.ops.queries import resolve
from registry.records import (
    PROMOTE,
    ROLLBACK,
    ROLLBACK_TO,
    AliasMoveRecord,
    AliasRecord,
)
from registry.refs import (
    validate_alias,
    validate_name,
)
from registry.reports import (
    AliasChange,
)
from registry.retention import (
    Decision,
    Policy,
)

T = TypeVar("T")


@requires("promote")
@journaled
def promote(ctx: Context, ref: str, alias: str, *, reason: str = "") -> AliasChange:
    """Point ALIAS of REF's model at REF (atomic; recorded in the alias history). A
    protected alias moves only for the promoter or admin role."""
    validate_alias(alias)
    check_text("reason", reason, limit=4096)
    version = resolve(ctx, ref)
    return _move(ctx, version.name, alias, kind=PROMOTE, target=version.number, reason=reason)


def _move(
    ctx: Context, name: str, alias: str, *, kind: str, target: int | None, reason: str
) -> AliasChange:
    """Move the alias in the catalog (a protected one only for the promoter and admin roles),
    announce the move to the webhooks and keep the version it now points at locked."""
    move, now = ctx.catalog.move_alias(
        name,
        alias,
        kind=kind,
        target=target,
        reason=reason,
        actor=ctx.actor,
        may_move_protected=may_move_protected(ctx.role),
        notify=[hook.url for hook in ctx.settings.webhooks],
        event={"registry": ctx.settings.registry_id},
    )
    failed = deliver_pending(ctx) if move and move.event_id else []
    return AliasChange(move, now, tuple(failed), _lock_aliased(ctx, now))


def _lock_aliased(ctx: Context, alias: AliasRecord) -> tuple[str, ...]:
    """An aliased version is kept open-endedly: its objects' Object Lock is extended now,
    not only at the next gc (a rollback to an old version whose lock lapsed). The move
    stands whatever happens here; problems are returned as warnings."""
    problems: list[str] = []
    keep = Decision(alias.number, True, (f"alias {alias.alias}",), None, True)
    try:
        extend_locks(
            ctx,
            [(alias.name, Policy(), [keep])],
            now=datetime.now(UTC),
            dry_run=False,
            problems=problems,
        )
    except RegistryError as error:
        problems.append(f"Object Lock not extended: {error}")
    return tuple(problems)


@requires("rollback")
@journaled
def rollback(
    ctx: Context, name: str, alias: str, *, to: str | None = None, reason: str = ""
) -> AliasChange:
    """Move ALIAS back to the version it pointed at before the current one (repeated
    rollbacks keep going back), or to `to`, a version of the same model."""
    validate_name(name)
    validate_alias(alias)
    check_text("reason", reason, limit=4096)
    target = None
    if to is not None:
        version = resolve(ctx, to)
        if version.name != name:
            raise InvalidInputError(f"{to} is not a version of {name}")
        target = version.number
    kind = ROLLBACK if target is None else ROLLBACK_TO
    return _move(ctx, name, alias, kind=kind, target=target, reason=reason)


@requires("rollback")
def rollback_target(ctx: Context, name: str, alias: str) -> int:
    """The version number a plain rollback of ALIAS would move it to now (nothing moves)."""
    return ctx.catalog.rollback_target(validate_name(name), validate_alias(alias))


@requires("protect")
@journaled
def protect_alias(ctx: Context, name: str, alias: str, *, protected: bool = True) -> AliasRecord:
    return ctx.catalog.protect_alias(
        validate_name(name), validate_alias(alias), protected=protected, actor=ctx.actor
    )


@requires("read")
def aliases(ctx: Context, name: str) -> list[AliasRecord]:
    return ctx.catalog.aliases(validate_name(name))


@requires("read")
def history(
    ctx: Context, name: str, alias: str | None = None, *, at: datetime | None = None
) -> list[AliasMoveRecord]:
    """The moves of the model's aliases (or one), oldest first; with `at`, for each alias
    the move that was in force at that instant (what `production` was at time T)."""
    validate_name(name)
    if alias is not None:
        validate_alias(alias)
    moves = ctx.catalog.alias_history(name, alias)
    if at is None:
        return moves
    if at.tzinfo is None:
        raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    current: dict[str, AliasMoveRecord] = {}
    for move in moves:
        if move.moved_at <= at:
            current[move.alias] = move
    return [current[key] for key in sorted(current)]
