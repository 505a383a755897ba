"""`promote`, `rollback`, `history` and `alias ls|protect|unprotect`: the aliases of a model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from cli.ui import (
    digest_prefix,
    handle_errors,
    open_registry,
    print_json,
    print_table,
    stdout,
    table,
)
from registry import wire
from registry.errors import InvalidInputError

if TYPE_CHECKING:
    from registry.reports import AliasChange

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
REASON = click.option("--reason", default="", help="Why (kept in the alias history and audit).")


def _report(change: AliasChange, as_json: bool) -> None:
    alias = change.alias
    for failure in change.undelivered:
        click.echo(
            f"warning: event not delivered ({failure}); `model-registry events deliver` retries it",
            err=True,
        )
    for problem in change.unlocked:
        click.echo(f"warning: {problem}; the next `model-registry gc` tries again", err=True)
    if as_json:
        print_json(wire.AliasChange.of(change))
        return
    if change.move is None:
        stdout.print(
            f"unchanged: {alias.name}:{alias.alias} already is {alias.name}@{alias.number}"
        )
        return
    before = "new" if change.move.previous is None else f"was @{change.move.previous}"
    stdout.print(
        f"{alias.name}:{alias.alias} -> {alias.name}@{alias.number}  ({before})  "
        f"{alias.digest[:19]}"
    )


@click.command()
@click.argument("ref")
@click.argument("alias")
@REASON
@JSON
@handle_errors
def promote(ref: str, alias: str, reason: str, as_json: bool) -> None:
    """Point ALIAS (production, staging, ...) of REF's model at REF."""
    with open_registry() as registry:
        change = registry.promote(ref, alias, reason=reason)
    _report(change, as_json)


@click.command()
@click.argument("name")
@click.argument("alias")
@click.option("--to", "to", metavar="REF", help="Move to this version instead of the previous.")
@REASON
@JSON
@handle_errors
def rollback(name: str, alias: str, to: str | None, reason: str, as_json: bool) -> None:
    """Move ALIAS of NAME back to the version it pointed at before (or to --to REF)."""
    with open_registry() as registry:
        change = registry.rollback(name, alias, to=to, reason=reason)
    _report(change, as_json)


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"invalid time {text!r}", hint="use ISO 8601, e.g. 2026-11-30T12:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@click.command()
@click.argument("name")
@click.argument("alias", required=False)
@click.option("--at", "at", metavar="TIME", help="Where each alias pointed at TIME (ISO 8601).")
@JSON
@handle_errors
def history(name: str, alias: str | None, at: str | None, as_json: bool) -> None:
    """The moves of NAME's aliases (who, when, why); with --at, where they pointed then."""
    moment = _parse_time(at)
    with open_registry() as registry:
        moves = registry.history(name, alias, at=moment)
    if as_json:
        print_json([wire.AliasMove.of(m) for m in moves])
        return
    if not moves:
        stdout.print("no alias moves" + (f" before {at}" if at else ""))
        return
    found = table("alias", "version", "before", "kind", "when (UTC)", "by", wide=("reason",))
    for m in moves:
        found.add_row(
            m.alias,
            f"@{m.number}",
            "-" if m.previous is None else f"@{m.previous}",
            m.kind,
            m.moved_at.strftime("%Y-%m-%d %H:%M"),
            m.moved_by,
            m.reason,
        )
    print_table(found)


@click.group("alias")
def alias_group() -> None:
    """List and protect aliases."""


@alias_group.command("ls")
@click.argument("name")
@JSON
@handle_errors
def list_(name: str, as_json: bool) -> None:
    """The aliases of NAME and where they point."""
    with open_registry() as registry:
        aliases = registry.aliases(name)
    if as_json:
        print_json([wire.Alias.of(a) for a in aliases])
        return
    if not aliases:
        stdout.print(f"{name} has no aliases: model-registry promote REF ALIAS")
        return
    found = table("alias", "version", "blake3", "protected", "moved (UTC)", "by")
    for a in aliases:
        found.add_row(
            a.alias,
            f"@{a.number}",
            digest_prefix(a.digest),
            "yes" if a.protected else "",
            a.updated_at.strftime("%Y-%m-%d %H:%M"),
            a.updated_by,
        )
    print_table(found)


@alias_group.command()
@click.argument("name")
@click.argument("alias")
@JSON
@handle_errors
def protect(name: str, alias: str, as_json: bool) -> None:
    """Protect ALIAS: moving it then needs the promoter role."""
    with open_registry() as registry:
        record = registry.protect_alias(name, alias, protected=True)
    print_json(wire.Alias.of(record)) if as_json else stdout.print(f"protected {name}:{alias}")


@alias_group.command()
@click.argument("name")
@click.argument("alias")
@JSON
@handle_errors
def unprotect(name: str, alias: str, as_json: bool) -> None:
    """Remove ALIAS's protection."""
    with open_registry() as registry:
        record = registry.protect_alias(name, alias, protected=False)
    print_json(wire.Alias.of(record)) if as_json else stdout.print(f"unprotected {name}:{alias}")


def register(group: click.Group) -> None:
    for command in (promote, rollback, history, alias_group):
        group.add_command(command)
