"""`regions status` and `replicate`: the health of each region's copy of the store, and healing."""

from __future__ import annotations

import sys

import click
from rich.markup import escape
from rich.table import Table

from cli.ui import handle_errors, open_registry, print_json, stdout
from registry import wire
from registry.errors import StorageError

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def regions() -> None:
    """The regions that hold copies of the store."""


@regions.command()
@JSON
@handle_errors
def status(as_json: bool) -> None:
    """Probe every region at once and count its verified, pending, bad and unrecorded copies.

    A region is ok, unreachable (refused or failed), hung (no answer within
    deadlines.request_seconds) or foreign (another registry's store). Works without the catalog
    (no copies are counted then). Exits 0 only when every region is reachable and holds a
    verified copy of everything."""
    with open_registry(recovery=True, replay=False) as registry:
        found = registry.regions_status()
    if as_json:
        print_json([wire.RegionStatus.of(r) for r in found])
    else:
        table = Table("region", "priority", "health", "verified", "pending", "bad", "unrecorded")
        table.add_column("store", overflow="fold")
        for r in found:
            health = f"ok ({r.seconds * 1000:.0f} ms)" if r.reachable else r.state.upper()
            counts = [r.verified, r.pending, r.bad, r.missing]
            table.add_row(
                escape(r.name),
                str(r.priority),
                health,
                *(str(count) if r.counted else "-" for count in counts),
                escape(r.store),
            )
        stdout.print(table)
        for r in found:
            if not r.reachable:
                click.echo(f"{r.name}: {r.state}: {r.detail}", err=True)
        if any(r.reachable and not r.complete for r in found) and all(r.counted for r in found):
            click.echo(
                "some copies are pending, bad or unrecorded: `model-registry replicate` writes "
                "and checks them (`--repair` replaces bad ones)",
                err=True,
            )
    if not all(r.complete for r in found):
        sys.exit(StorageError.exit_code)


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Also re-check copies recorded as bad and replace the damaged ones with a good copy.",
)
@JSON
@handle_errors
def replicate(repair: bool, as_json: bool) -> None:
    """Copy every object to every region that lacks it, reading each copy back.

    A region's bucket is created (with versioning and Object Lock) when it is gone, so an empty,
    rebuilt region is refilled. Exits non-zero while any copy is still missing or bad."""
    with open_registry() as registry:
        report = registry.replicate(repair=repair)
    if as_json:
        print_json(wire.ReplicateReport.of(report))
    else:
        stdout.print(
            f"{report.objects} objects: {report.copied} copies written, {report.repaired} "
            f"repaired, {report.verified} copies verified"
        )
        for problem in report.problems:
            click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        sys.exit(StorageError.exit_code)


def register(group: click.Group) -> None:
    group.add_command(regions)
    group.add_command(replicate)
