"""`model-registry catalog ...`: the journal of catalog changes in the stores, and rebuilding a
lost catalog from one region."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from cli.ui import (
    handle_errors,
    local_only,
    open_registry,
    print_json,
    print_table,
    stderr,
    stdout,
    styled,
    table,
)
from registry import wire
from registry.errors import (
    IntegrityError,
    InvalidInputError,
    StorageError,
)


@click.group()
def catalog() -> None:
    """The catalog's journal in the stores, and rebuilding the catalog from them."""


@catalog.command()
@click.option("--drain", is_flag=True, help="Copy what each region lacks to it now.")
@click.option(
    "--new-epoch",
    is_flag=True,
    help="Make this catalog's journal the newest in the stores and write it whole (a catalog "
    "restored from a backup: what the stores' journal holds beyond it is dropped). Admin.",
)
@click.option(
    "--stores",
    is_flag=True,
    help="Show what each region's store holds of the journal (also what it is when the catalog "
    "is missing).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def journal(drain: bool, new_epoch: bool, stores: bool, as_json: bool) -> None:
    """How far each region's journal goes (entries behind, age of the oldest it lacks: the
    recovery point of a rebuild from it). Without a catalog, or with --stores, what each
    region's store holds: the journal a rebuild from it would replay. Exit 9 if --drain (or
    --new-epoch) left a region behind or failed in one."""
    if stores and (drain or new_epoch):
        raise InvalidInputError("--stores only shows the stores: not with --drain or --new-epoch")
    # --drain and --new-epoch need the catalog itself: no stand-in (a missing one is exit 13).
    with open_registry(recovery=not (drain or new_epoch), replay=False) as registry:
        if registry.provisional is not None or stores:
            _print_stored(registry.stored_journals(), as_json=as_json)
            return
        if new_epoch:
            registry.new_journal_epoch()
        states = registry.drain_journal() if drain or new_epoch else registry.journal_status()
    if as_json:
        print_json([wire.JournalState.of(s) for s in states])
    else:
        found = table("region", "journal up to", "behind", "oldest missing", wide=("problem",))
        for s in states:
            found.add_row(
                s.region,
                str(s.mark),
                str(s.behind),
                "-" if not s.behind else f"{s.lag_seconds:.1f} s ago",
                s.error or "",
            )
        print_table(found)
    if (drain or new_epoch) and any(s.behind or s.error for s in states):
        sys.exit(9)


def _print_stored(found: Sequence[wire.StoredJournalLike], *, as_json: bool) -> None:
    if as_json:
        print_json([wire.StoredJournal.of(s) for s in found])
    else:
        listed = table("region", "epoch", "entries", "last change (UTC)", wide=("problem",))
        for s in found:
            listed.add_row(
                s.region,
                (s.epoch or "-")[:12],
                str(s.end),
                s.newest_at.strftime("%Y-%m-%d %H:%M:%S") if s.newest_at else "-",
                s.error or s.behind,
            )
        print_table(listed)
    if any(s.error or s.behind for s in found):
        sys.exit(StorageError.exit_code)


@catalog.command()
@click.option("--from", "source", required=True, metavar="REGION", help="The region to read.")
@click.option(
    "--catalog",
    "catalog_url",
    metavar="URL",
    help="The new catalog's database (default: catalog.url of config.toml, which must be gone "
    "or empty).",
)
@click.option(
    "--accept-loss",
    is_flag=True,
    help="Rebuild even though another region holds a longer or newer journal, or this region "
    "holds none (what only the other journal holds is lost).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def rebuild(source: str, catalog_url: str | None, accept_loss: bool, as_json: bool) -> None:
    """Build the catalog anew from one region alone: its journal, version records and
    manifests, then key slots and every copy read back in every region that answers.

    Needs config.toml and the region's key provider, nothing else. Refuses (exit 6) a journal
    segment, version record or manifest that does not verify, naming it, and a region whose
    journal another reachable region shows to be behind (unless --accept-loss); exit 6 too when
    some live version could not be restored (listed)."""
    local_only("catalog rebuild")  # where config.toml and the keys are
    from registry.service import rebuild_catalog

    def progress(message: str) -> None:
        if not as_json:
            stderr.print(styled(message, "dim"))

    report = rebuild_catalog(
        os.environ.get("MODEL_REGISTRY_HOME"),
        source=source,
        catalog_url=catalog_url,
        accept_loss=accept_loss,
        on_progress=progress,
    )
    if as_json:
        print_json(wire.RebuildReport.of(report))
    else:
        restored = table("table", "rows")
        for name, count in report.restored.items():
            restored.add_row(name, str(count))
        print_table(restored)
        stdout.print(
            f"rebuilt {report.catalog} from {report.region}: {report.entries} journal entries "
            f"in {report.segments} segments, {report.seconds:.2f} s"
        )
        for ref in report.from_records:
            stdout.print(f"restored from its version record (not yet journaled): {ref}")
        for line in report.unreachable:
            stdout.print(f"not probed (unreachable): {line}")
        for line in report.accepted_loss:
            stdout.print(f"accepted loss: {line}")
        stdout.print(f"journal written to: {', '.join(report.journal) or 'no region'}")
        for line in report.bad_copies:
            stdout.print(f"bad copy (queued for `replicate --repair`): {line}")
        for line in report.unrestored:
            click.echo(f"NOT RESTORED {line}", err=True)
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


def register(group: click.Group) -> None:
    group.add_command(catalog)
