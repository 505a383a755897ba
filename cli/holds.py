"""`hold set`, `hold release`, `hold ls`: legal holds on versions."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table
from registry import wire
from registry.errors import StorageError

if TYPE_CHECKING:
    from registry.reports import HoldResult

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
REASON = click.option("--reason", required=True, help="Why (kept in the audit trail).")


@click.group()
def hold() -> None:
    """Legal holds: a held version's objects cannot be deleted, whatever their retention."""


def _report(result: HoldResult, verb: str, as_json: bool) -> None:
    record = result.hold
    if as_json:
        print_json(wire.HoldResult.of(result))
    else:
        stdout.print(f"{verb} {record.ref} ({result.objects} objects)")
    for failure in result.failed_regions:
        click.echo(f"error: not applied in {failure}; run the command again", err=True)
    if result.failed_regions:
        sys.exit(StorageError.exit_code)


@hold.command("set")
@click.argument("ref")
@REASON
@JSON
@handle_errors
def set_(ref: str, reason: str, as_json: bool) -> None:
    """Place a legal hold on REF (on S3: the legal hold of every object, in every region)."""
    with open_registry() as registry:
        result = registry.hold(ref, reason=reason)
    _report(result, "held" if result.changed else "already held:", as_json)


@hold.command()
@click.argument("ref")
@REASON
@JSON
@handle_errors
def release(ref: str, reason: str, as_json: bool) -> None:
    """Release the legal hold on REF (objects another held version shares stay held)."""
    with open_registry() as registry:
        result = registry.release_hold(ref, reason=reason)
    _report(result, "released", as_json)


@hold.command("ls")
@JSON
@handle_errors
def list_(as_json: bool) -> None:
    """List the versions under legal hold."""
    with open_registry() as registry:
        holds = registry.holds()
    if as_json:
        print_json([wire.Hold.of(h) for h in holds])
        return
    if not holds:
        stdout.print("no version is under legal hold")
        return
    found = table("version", "since (UTC)", "by", wide=("reason",))
    for h in holds:
        found.add_row(h.ref, h.placed_at.strftime("%Y-%m-%d %H:%M"), h.placed_by, h.reason)
    print_table(found)


def register(group: click.Group) -> None:
    group.add_command(hold)
