"""`gc` and `delete`: expiring versions by policy, deleting one on an admin's word, and sweeping
the objects nothing needs any more."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cli.ui import (
    digest_prefix,
    handle_errors,
    human_size,
    open_registry,
    print_json,
    print_table,
    stdout,
    styled,
    table,
)
from registry import wire
from registry.errors import InvalidInputError
from registry.retention import DEFAULT_GRACE, format_duration

if TYPE_CHECKING:
    from registry.reports import GcReport

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _shown(purpose: str, digest: str) -> str:
    """A digest's first 12 hex; an orphan, which no row names, by its object name."""
    return digest if purpose == "orphan" else digest_prefix(digest)


def _print_report(report: GcReport) -> None:
    if report.expired:
        label = "would expire" if report.dry_run else "expired"
        stdout.print(f"{label}: " + ", ".join(v.ref for v in report.expired))
    if report.locks_extended:
        verb = "would extend" if report.dry_run else "extended"
        stdout.print(f"{verb} the Object Lock of {report.locks_extended} objects")
    if report.swept or report.kept:
        found = table("object", "digest / name", "action", wide=("why / bytes",))
        for item in report.swept:
            found.add_row(
                item.purpose,
                _shown(item.purpose, item.digest),
                styled("would delete" if report.dry_run else "deleted", "bold"),
                human_size(item.bytes),
            )
        for kept in report.kept:
            # One line per region that keeps it, each with its own lock.
            why = (
                "\n".join(f"{region}: {reason}" for region, reason in kept.regions)
                if kept.regions
                else kept.reason
            )
            found.add_row(kept.purpose, _shown(kept.purpose, kept.digest), "keep", why)
        print_table(found)
    verb = "would reclaim" if report.dry_run else "reclaimed"
    stdout.print(
        f"{verb} {human_size(report.bytes_reclaimed)} ({report.bytes_reclaimed} bytes) in "
        f"{len(report.swept)} objects; {len(report.kept)} unreferenced objects and orphans kept "
        f"(grace window {format_duration(report.grace)})"
    )
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--grace",
    default=DEFAULT_GRACE,
    show_default=True,
    metavar="DURATION",
    help="Sweep only objects unneeded for longer than this (30s, 15m, 12h, 1d, 2w).",
)
@JSON
@handle_errors
def gc(dry_run: bool, yes: bool, grace: str, as_json: bool) -> None:
    """Expire the versions no retention policy keeps (tombstones stay in the audit trail),
    extend the Object Lock of the versions kept, then delete the objects no live version
    needs once their lock has expired and the grace window has passed."""
    if as_json and not (dry_run or yes):
        raise InvalidInputError(
            "--json asks no questions", hint="add --yes to run it, or --dry-run to preview it"
        )
    with open_registry() as registry:
        if not dry_run and not yes:
            preview = registry.gc(dry_run=True, grace=grace)
            if not (preview.expired or preview.swept or preview.locks_extended):
                dry_run = True  # nothing to change: show the preview as the result
            else:
                _print_report(preview)
                click.confirm("Go ahead?", abort=True, err=True)
        report = registry.gc(dry_run=dry_run, grace=grace)
    if as_json:
        print_json(wire.GcReport.of(report))
    else:
        _print_report(report)
    if not report.ok:
        raise SystemExit(9)


@click.command()
@click.argument("ref")
@click.option("--reason", required=True, help="Why it is deleted (kept in the audit trail).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON
@handle_errors
def delete(ref: str, reason: str, yes: bool, as_json: bool) -> None:
    """Delete the version REF outside the retention policy (admin only). It stays as a
    tombstone in the catalog and the audit trail; `gc` later reclaims its storage. Refused while
    an alias, a legal hold, an Object Lock or a retention rule keeps it."""
    if as_json and not yes:
        raise InvalidInputError("--json asks no questions", hint="add --yes to run it")
    with open_registry() as registry:
        if not yes:
            # Whatever would refuse the delete refuses it before the question.
            version = registry.delete(ref, reason=reason, dry_run=True)
            click.confirm(f"Delete {version.ref} ({version.digest[:19]})?", abort=True, err=True)
        version = registry.delete(ref, reason=reason)
    if as_json:
        print_json(wire.Version.of(version))
    else:
        stdout.print(f"deleted {version.ref}; `model-registry gc` reclaims its storage")


def register(group: click.Group) -> None:
    group.add_command(gc)
    group.add_command(delete)
