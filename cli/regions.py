"""`regions status` and `replicate`: the health of each region's copy of the store, and healing."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table
from registry import wire
from registry.errors import REPUSH_HINT, StorageError

if TYPE_CHECKING:
    from registry.reports import RegionStatus

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
        listed = table(
            "region",
            "priority",
            "health",
            "verified",
            "pending",
            "bad",
            "unrecorded",
            wide=("store",),
        )
        for r in found:
            health = f"ok ({r.seconds * 1000:.0f} ms)" if r.reachable else r.state.upper()
            counts = [r.verified, r.pending, r.bad, r.missing]
            listed.add_row(
                r.name,
                str(r.priority),
                health,
                *(str(count) if r.counted else "-" for count in counts),
                r.store,
            )
        print_table(listed)
        for r in found:
            if not r.reachable:
                click.echo(f"{r.name}: {r.state}: {r.detail}", err=True)
        if any(r.reachable and not r.complete for r in found) and all(r.counted for r in found):
            click.echo(_advice(found), err=True)
    if not all(r.complete for r in found):
        sys.exit(StorageError.exit_code)


def _advice(found: list[RegionStatus]) -> str:
    """What to do about the copies left: `replicate` writes what is pending or unrecorded from
    a good copy, `--repair` replaces bad ones from another region; with one region there is no
    other copy, and only the files pushed again rewrite a bad one."""
    counts = {
        "pending": sum(r.pending for r in found),
        "bad": sum(r.bad for r in found),
        "unrecorded": sum(r.missing for r in found),
    }
    left = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    if len(found) == 1:
        advice = []
        if counts["pending"] or counts["unrecorded"]:
            advice.append("`model-registry replicate` checks the pending and unrecorded ones")
        if counts["bad"]:
            advice.append(
                f"with one region there is no good copy to repair a bad one from: {REPUSH_HINT}"
            )
        return f"copies left: {left}. " + "; ".join(advice)
    return (
        f"copies left: {left}. `model-registry replicate` writes and checks the pending and "
        "unrecorded ones from a good copy; `--repair` replaces bad ones from another region"
    )


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
