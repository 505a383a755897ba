"""`audit [NAME] [--since TIME]` and `audit verify`: the tamper-evident audit trail."""

from __future__ import annotations

import sys

import click

from cli.aliases import _parse_time
from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table
from registry import wire
from registry.errors import IntegrityError

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


class _AuditGroup(click.Group):
    """`audit NAME` lists NAME's entries; `audit verify` checks the chain: a first argument
    that is not a subcommand is the NAME of `audit ls`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(arg in ("-h", "--help") for arg in args[:1]):
            return super().parse_args(ctx, args)
        words = [arg for arg in args if not arg.startswith("-")]
        if words and words[0] in self.commands:
            # Options given before the subcommand (`audit --json verify`) belong to it.
            index = args.index(words[0])
            args = [words[0], *args[:index], *args[index + 1 :]]
        else:
            args = ["ls", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The forms people type (docs/cli.md), not click's COMMAND [ARGS].
        formatter.write_usage(ctx.command_path, "[NAME] [--since TIME] [--limit N] [--json]")
        formatter.write_usage(ctx.command_path, "verify [--json]", prefix="   or: ")


@click.group(cls=_AuditGroup)
def audit() -> None:
    """The audit trail: every state change, who, when, in a hash chain.

    `audit [NAME]` (the same as `audit ls [NAME]`) lists the newest entries, about model NAME
    when given; `audit verify` checks the chain."""


@audit.command("ls")
@click.argument("name", required=False)
@click.option("--since", metavar="TIME", help="Only entries at or after TIME (ISO 8601).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@JSON
@handle_errors
def list_(name: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """The newest entries (about model NAME), newest first."""
    with open_registry() as registry:
        events = registry.audit_events(subject=name, since=_parse_time(since), limit=limit)
    if as_json:
        print_json([wire.AuditEntry.of(e) for e in events])
        return
    found = table("id", "when (UTC)", "actor", "action", "subject", wide=("details",))
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()))
        found.add_row(
            str(e.id),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.actor,
            e.action,
            e.subject,
            details,
        )
    print_table(found)


@audit.command()
@JSON
@handle_errors
def verify(as_json: bool) -> None:
    """Recompute the hash chain, naming the first edited, deleted, inserted or moved entry,
    and hold it against the audit entries of each region's journal (in the stores)."""
    with open_registry() as registry:
        result = registry.verify_audit()
    if as_json:
        print_json(wire.AuditVerification.of(result))
    elif result.ok:
        stdout.print(f"ok: {result.checked} audit entries chain up; head {result.head}")
        if result.regions_compared:
            stdout.print(
                "the same as the journal in region "
                f"{', '.join(result.regions_compared)}"
                + (
                    f" ({result.not_in_journal} newest not copied out yet)"
                    if result.not_in_journal
                    else ""
                )
            )
        if result.links_only:
            stdout.print(
                f"{result.links_only} of them are token events restored by a catalog rebuild as "
                "chain links only (their content is never journaled)"
            )
    elif result.differences and result.first_bad is None:
        click.echo(f"BAD {result.problem}", err=True)
        for line in result.differences[1:]:
            click.echo(f"    {line}", err=True)
    else:
        click.echo(f"BAD {result.problem} ({result.checked} entries before it check)", err=True)
    if not result.ok:
        sys.exit(IntegrityError.exit_code)


def register(group: click.Group) -> None:
    group.add_command(audit)
