"""The catalog's journal in the stores: copying it out after every change, comparing it before
changes and trusted reads (a catalog behind it, restored from a backup, is refused), its
epochs, and the journal positions of each region.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from registry import journal
from registry.blobstore import BlobStore
from registry.errors import (
    CatalogBehindError,
    ConflictError,
    RegistryError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import regions_ready
from registry.replication import (
    Region,
)
from registry.storage import deadline

P = ParamSpec("P")
R = TypeVar("R")


# How often a process compares the stores' journals with its marks (besides its first drain).
JOURNAL_CHECK_SECONDS = 600.0


def journaled(
    operation: Callable[Concatenate[Context, P], R],
) -> Callable[Concatenate[Context, P], R]:
    """An operation that changes the catalog: first the catalog is checked against the stores'
    journal (once per home, then every ten minutes), so that a catalog behind them (restored
    from a backup) is refused before it changes anything; when the operation ends (also when it
    fails: part of a gc may have committed), the journal is copied out to the regions."""

    @functools.wraps(operation)
    def wrapper(ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> R:
        _guard_catalog(ctx)
        try:
            result = operation(ctx, *args, **kwargs)
        except BaseException:
            with contextlib.suppress(CatalogBehindError):  # the operation's own error comes first
                drain_journal(ctx)
            raise
        try:
            drain_journal(ctx)
        except CatalogBehindError as error:
            raise CatalogBehindError(
                f"{error.message}; the change is in this catalog but was not copied to the "
                "stores' journal",
                hint=error.hint,
            ) from None
        return result

    return wrapper


def _behind(stored: journal.StoredJournal, newest: journal.StoredJournal) -> str:
    if stored.region == newest.region or (stored.epoch, stored.end) == (newest.epoch, newest.end):
        return ""
    if stored.epoch != newest.epoch:
        return f"an older journal epoch than {newest.region}'s"
    if stored.end < newest.end:
        return f"behind {newest.region} (which holds entries up to {newest.end})"
    return ""


class JournalRound:
    """Which regions' journals were compared with the catalog in the current round (a round
    is renewed every JOURNAL_CHECK_SECONDS): a change waits for the comparison of every
    region it can reach, and no region is written to before it was compared."""

    def __init__(self) -> None:
        self.started = float("-inf")
        self.regions: set[str] = set()

    def due(self, names: set[str]) -> bool:
        stale = time.monotonic() - self.started > JOURNAL_CHECK_SECONDS
        return stale or not names <= self.regions

    def begin_if_stale(self) -> None:
        if time.monotonic() - self.started > JOURNAL_CHECK_SECONDS:
            self.started = time.monotonic()
            self.regions.clear()

    def reset(self) -> None:
        self.started = float("-inf")
        self.regions.clear()


def _journal_stores(ctx: Context) -> list[tuple[str, BlobStore]]:
    return [(region.name, region.store) for region in ctx.replicas.regions]


@requires("drain-journal")
def drain_journal(ctx: Context) -> list[journal.RegionJournal]:
    """Copy the catalog's new journal entries to every region (after each change and on
    the server's timer); a region that cannot take them is reported, and caught up later.
    `CatalogBehindError` when a store holds journal entries this catalog lacks."""
    return _drain(ctx, check=_journal_check_due(ctx))


def _journal_check_due(ctx: Context) -> bool:
    return ctx.home.journal_round.due({region.name for region in ctx.replicas.regions})


def _drain(ctx: Context, *, check: bool, write: bool = True) -> list[journal.RegionJournal]:
    if ctx.provisional is not None:
        return []
    try:
        if write:
            ctx.catalog.journaled = 0
        # A region that is down, hung or missing its budgets is not waited for: its mark
        # stays and a later drain catches it up (a pull's closing drain must not wait out
        # a frozen region's deadline).
        skip: dict[str, str] = {}
        suspects = {
            region.name: trouble
            for region in ctx.replicas.regions
            if (trouble := ctx.replicas.health.suspect(region.name)) is not None
        }
        for name, trouble in ctx.replicas.settle_claims().items():
            if name in suspects or trouble is not None:
                skip[name] = suspects.get(name) or str(trouble)
        if check:
            ctx.home.journal_round.begin_if_stale()
        # A region not compared yet in this round is compared before anything is written
        # to it: a catalog behind the stores must never add a segment of its own.
        compare = {r.name for r in ctx.replicas.regions} - ctx.home.journal_round.regions
        # Only compared: the catalog's reads do (without SQLAlchemy, where a load finds the
        # catalog as usual), so the first tensor never waits for the ORM's first query.
        states = journal.drain(
            ctx.catalog if write else ctx.reads,
            _journal_stores(ctx),
            check=compare,
            skip=skip,
            write=write,
        )
        ctx.home.journal_round.regions.update(
            state.region for state in states if not state.error and state.region not in skip
        )
        return states
    except CatalogBehindError:
        raise
    except RegistryError as error:
        # The change itself is committed; its entry waits in the outbox for the next drain.
        journal.log.warning("the journal was not copied out: %s", error)
        return journal.status(ctx.catalog, [name for name, _ in _journal_stores(ctx)])


def guard_reads(ctx: Context, *, write: bool = True) -> None:
    """Before a command that reads the stores on the catalog's word (pull, load, verify,
    scrub, drill): a catalog behind the stores' journal would serve versions and aliases
    older than the stores' (a restored backup's production), so it is refused, as a
    change is (checked once per handle and every ten minutes)."""
    if ctx.provisional is None:
        _compare_journal(
            ctx,
            write=write,
            refused="it would serve what the registry held before (nothing was read)",
        )


def drain_after_reads(ctx: Context) -> None:
    """Copy out what a read left in the journal (its audit entry, and entries it found
    waiting), after the reading: a load compares the journal before its first byte
    (`guard_reads(write=False)`) and writes it here, so its time to first tensor holds no
    store write. A region that cannot take them is caught up by a later drain."""
    if ctx.provisional is None:
        with contextlib.suppress(CatalogBehindError):  # refused before the read, if at all
            _drain(ctx, check=False)


def _guard_catalog(ctx: Context) -> None:
    """Before a change: refuse it when the stores' journal shows this catalog is behind
    them (checked once per handle and every ten minutes; pending entries drain too)."""
    if ctx.provisional is not None:
        raise ConflictError(
            f"the catalog is missing; this command works from {ctx.provisional} and "
            "changes nothing",
            hint="rebuild the catalog first: `model-registry catalog rebuild --from REGION`",
        )
    _compare_journal(ctx, write=True, refused="nothing was changed")


def _compare_journal(ctx: Context, *, write: bool, refused: str) -> None:
    """Compare the stores' journal with the catalog when it is due; `refused` says what the
    refusal of a catalog behind them spared."""
    if not _journal_check_due(ctx):
        return
    try:
        _drain(ctx, check=True, write=write)
    except CatalogBehindError as error:
        raise CatalogBehindError(f"{error.message}; {refused}", hint=error.hint) from None


@requires("journal-epoch")
def new_journal_epoch(ctx: Context) -> str:
    """Make this catalog's journal the newest in the stores (a new epoch, later than any
    they hold, written whole by the drain that follows): for a catalog restored from a
    backup (older than a rebuild, or behind the stores), once it is certain that this is
    the catalog to keep. What the stores' journal holds beyond it is no longer followed."""
    regions_ready(ctx)
    # Two operators at once start one epoch, not two.
    replacing = ctx.catalog.journal_epoch().epoch
    newest = None
    for _name, store in _journal_stores(ctx):
        found, _segments = journal.epochs(store)
        if found and (newest is None or found[-1].started_at > newest):
            newest = found[-1].started_at
    ctx.home.journal_round.reset()
    try:
        return ctx.catalog.start_journal_epoch(
            reason="started by an operator", actor=ctx.actor, after=newest, replacing=replacing
        )
    finally:
        drain_journal(ctx)


@requires("journal-status")
def stored_journals(ctx: Context) -> list[journal.StoredJournal]:
    """Each region's journal as its store holds it (no catalog needed: what a rebuild from
    it would restore), read in parallel, each within its requests' deadlines."""

    def read(region: Region) -> journal.StoredJournal:
        try:
            ctx.replicas.claim(region)
            return journal.summary(region.name, region.store)
        except RegistryError as error:
            return journal.StoredJournal(region.name, None, None, 0, None, 0, str(error))

    futures = [deadline.submit(functools.partial(read, r)) for r in ctx.replicas.regions]
    found = [future.result() for future in futures]
    # A region whose journal stops short of another's, or follows an older epoch, is what
    # a rebuild from it would lose: said beside it.
    newest = max(
        (s for s in found if s.started_at is not None),
        key=lambda s: (s.started_at, s.end),
        default=None,
    )
    if newest is None:
        return found
    return [dataclasses.replace(s, behind=_behind(s, newest)) if not s.error else s for s in found]


@requires("journal-status")
def journal_status(ctx: Context, *, check: bool = True) -> list[journal.RegionJournal]:
    """How far each region's journal goes by the catalog's marks; with `check`,
    `CatalogBehindError` when a store shows the catalog is behind it (checked as before a
    change; without it, the catalog alone is read: metrics)."""
    if check:
        guard_reads(ctx, write=False)
    return _journal_positions(ctx)


def _journal_positions(ctx: Context) -> list[journal.RegionJournal]:
    return journal.status(ctx.catalog, [name for name, _ in _journal_stores(ctx)])
