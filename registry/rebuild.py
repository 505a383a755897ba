"""Rebuild a lost catalog from one region alone: its journal replayed, its version records for
pushes the journal had not reached yet, its manifests checked against both, and then key slots and
placements read from every region that answers (docs/operations.md, "Lost catalog database").

Nothing is needed but config.toml and the region's key provider: the naming key is unwrapped from
the store when its file is gone too. Everything is read and checked before the new catalog is
committed in one transaction; a journal segment, version record or manifest that does not verify
refuses the rebuild with its name, and nothing is written (a SQLite catalog is built beside its
final path and moved there at the end). Once the catalog is in place, its journal is written to
every region under a new epoch.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from registry import journal
from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST, BlobStore, stored_naming_key
from registry.catalog.db import create_catalog_engine
from registry.catalog.repository import Catalog
from registry.catalog.restore import Restore, RestoreTarget, restoring, safe_url
from registry.config import RegionSettings, Settings
from registry.crypto.keys import KeyProvider, WrappedKey, read_key_file
from registry.errors import IntegrityError, InvalidInputError, RegistryError, StorageError
from registry.manifest import Manifest
from registry.records import FileRecord, NewBlob, NewVersion, PlacementRecord
from registry.replication import BAD, Region, ReplicaSet
from registry.storage import deadline
from registry.storage.factory import open_driver

log = logging.getLogger("model_registry.rebuild")
# Longer than a push's commit can take (its retries included): a version record older than the
# journal's last entry by more than this had its commit journaled, or never committed.
COMMIT_WINDOW = timedelta(minutes=10)


@dataclass
class RebuildReport:
    region: str
    catalog: str
    entries: int = 0
    segments: int = 0
    restored: dict[str, int] = field(default_factory=dict)
    from_records: list[str] = field(default_factory=list)
    unrestored: list[str] = field(default_factory=list)
    probed: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    bad_copies: list[str] = field(default_factory=list)
    accepted_loss: list[str] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unrestored


ProviderFactory = Callable[[RegionSettings], KeyProvider]


def rebuild(
    settings: Settings,
    *,
    source: str,
    catalog_url: str,
    key_provider: ProviderFactory,
    actor: str,
    accept_loss: bool = False,
    stand_in: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> RebuildReport:
    """Build a fresh catalog at `catalog_url` from region `source` (see the module text).
    Refused when another reachable region holds a longer or newer journal, or when the region
    holds no journal at all, unless `accept_loss`.

    `stand_in` builds a throw-away catalog for commands that must work while the real one is
    lost (drill, verify --all, regions status, catalog journal): the journal and version records
    only, what it lacks against other regions noted instead of refused, no copy read back, no
    audit entry and nothing written to the stores."""
    started = time.monotonic()
    names = [region.name for region in settings.regions]
    if source not in names:
        raise InvalidInputError(
            f"no region {source!r} in config.toml", hint=f"regions: {', '.join(names)}"
        )
    say = on_progress or (lambda _message: None)
    report = RebuildReport(source, safe_url(catalog_url))
    order = sorted(settings.regions, key=lambda region: region.name != source)
    regions = _open_regions(settings, order, key_provider, report)
    try:
        replicas = ReplicaSet(
            regions, workers=settings.effective_workers, deadlines=settings.deadlines
        )
        main = regions[0].store
        main.check_claim()
        read, records = _read_source(main, source, report, accept_loss=accept_loss, say=say)
        entries = read.entries
        seen_epochs = _require_complete(
            read,
            source,
            regions[1:],
            records,
            report,
            accept_loss=accept_loss or stand_in,
            quiet=stand_in,
        )
        cutoff = entries[-1].at if entries else None
        with RestoreTarget(catalog_url, registry_id=settings.registry_id) as engine:
            with restoring(engine) as restore:
                restore.replay(entries)
                restore.fix_sequences()
                # What the journal lacked is journaled in the new catalog, like any change.
                restore.capture()
                _restore_records(
                    restore,
                    main,
                    records,
                    settings,
                    report,
                    cutoff=cutoff,
                    since=None if read.epoch is None else read.epoch.started_at,
                )
                restore.write_entry()
                if not stand_in:
                    _check_manifests(restore, main, settings, report)
                    say("reading key slots and checking every copy in every region")
                    _slots_and_placements(restore, replicas, report)
                restore.fix_sequences()
                # A journal of its own: written again, whole, under a new epoch, so nothing it
                # writes can collide with what a region holds of the old one. It starts later
                # than every epoch seen, whatever this host's clock says: readers follow the
                # newest.
                restore.start_epoch(
                    after=seen_epochs,
                    parent=None if read.epoch is None else read.epoch.epoch,
                    reason=f"rebuilt from {source}",
                )
                report.restored = restore.counts()
                links = restore.token_links()
            report.probed = [region.name for region in regions]
            if stand_in:
                report.seconds = time.monotonic() - started
                return report
            _audit_rebuild(Catalog(engine), actor, main, report, links)
        # The catalog is in place (committed, moved) before its journal is written: a rebuild
        # that stops now leaves a catalog whose next command drains, not a half-written epoch
        # and no catalog.
        say("writing the new catalog's journal to every region")
        report.journal = _write_journal(catalog_url, regions)
        report.seconds = time.monotonic() - started
    finally:
        for region in regions:
            region.store.driver.close()
    return report


def _write_journal(catalog_url: str, regions: Sequence[Region]) -> list[str]:
    """The new catalog's journal drained to every region: each region, or "region: error"."""
    final = Catalog(create_catalog_engine(catalog_url))
    try:
        return [
            f"{state.region}: {state.error}" if state.error else state.region
            for state in journal.drain(final, [(r.name, r.store) for r in regions])
        ]
    finally:
        final.close()


def _read_source(
    main: BlobStore,
    source: str,
    report: RebuildReport,
    *,
    accept_loss: bool,
    say: Callable[[str], None],
) -> tuple[journal.Journal, list[_Record]]:
    """The source region's journal and version records."""
    say(f"reading the journal of {source}")
    read = journal.read(main, allow_incomplete=accept_loss)
    if read.incomplete is not None:
        report.accepted_loss.append(
            f"{source}'s newest journal epoch {read.incomplete.epoch[:12]} was not rewritten "
            "whole; the epoch before it was read"
        )
    entries = read.entries
    report.entries = len(entries)
    report.segments = len({entry.segment for entry in entries})
    say(f"reading version records of {source}")
    records = _version_records(main)
    return read, records


def _open_regions(
    settings: Settings,
    order: Sequence[RegionSettings],
    key_provider: ProviderFactory,
    report: RebuildReport,
) -> list[Region]:
    """The source region (first in `order`), then every other one that answers; those that
    do not are noted in the report."""
    first = order[0]
    keys = key_provider(first)
    driver = open_driver(
        first.store, parallelism=settings.effective_workers, deadlines=settings.deadlines
    )
    try:
        if settings.naming_key_file.exists():
            naming_key = read_key_file(settings.naming_key_file, label="naming key")
        else:
            naming_key = stored_naming_key(driver, keys, registry_id=settings.registry_id)
    except BaseException:
        driver.close()
        raise
    regions = [Region(first.name, _store(settings, driver, keys, naming_key))]
    try:
        # The other regions are opened and checked in parallel, each within its deadlines: a
        # hung one costs one request's deadline, not one per step.
        opened = [
            deadline.submit(
                functools.partial(_open_region, settings, other, key_provider, naming_key)
            )
            for other in order[1:]
        ]
        for other, future in zip(order[1:], opened, strict=True):
            try:
                regions.append(future.result())
            except RegistryError as error:
                report.unreachable.append(f"{other.name}: {error}")
    except BaseException:
        for region in regions:
            region.store.driver.close()
        raise
    return regions


def _audit_rebuild(
    catalog: Catalog,
    actor: str,
    main: BlobStore,
    report: RebuildReport,
    links: list[tuple[int, str]],
) -> None:
    """The rebuild's own audit entry, in its own transaction through the catalog: audited and
    journaled like any change. `links` names the token events restored as chain links (audit
    verify trusts those, and only those)."""
    catalog.audit(
        actor,
        "catalog-rebuild",
        "registry",
        {
            "from": report.region,
            "journal_entries": report.entries,
            "from_version_records": report.from_records,
            "not_restored": report.unrestored,
            "unreachable": [line.split(":", 1)[0] for line in report.unreachable],
            "accepted_loss": report.accepted_loss,
            "links": [link for link, _hash in links],
            # Only the key holder can name links: a database writer cannot pass an
            # entry off as one by appending a rebuild entry of its own.
            "links_mac": main.audit_links_mac(links),
        },
    )
    catalog.close()


def choose_source(settings: Settings, *, key_provider: ProviderFactory) -> str | None:
    """The region a rebuild would best start from: the one holding the newest usable journal
    epoch, and the longest run of it (None when no reachable region holds a journal). Regions
    are read in parallel, each within its requests' deadlines."""

    def summary(region: RegionSettings) -> tuple[datetime, int] | None:
        opened = _open_region(settings, region, key_provider, None)
        try:
            found, segments = journal.epochs(opened.store)
        finally:
            opened.store.driver.close()
        whole = [epoch for epoch in found if journal.usable(epoch, segments)]
        if not whole:
            return None
        newest = whole[-1]
        return newest.started_at, journal.contiguous_end(segments.get(newest.epoch, []))

    futures = [
        (region.name, deadline.submit(functools.partial(summary, region)))
        for region in settings.regions
    ]
    best: tuple[tuple[datetime, int], str] | None = None
    for name, future in futures:
        try:
            found = future.result()
        except RegistryError as error:
            log.warning("region %s: its journal could not be read: %s", name, error)
            continue
        if found is not None and (best is None or found > best[0]):
            best = (found, name)
    return None if best is None else best[1]


def _require_complete(
    read: journal.Journal,
    source: str,
    others: Sequence[Region],
    records: Sequence[_Record],
    report: RebuildReport,
    *,
    accept_loss: bool,
    quiet: bool = False,
) -> list[datetime]:
    """Refuse to rebuild from a journal that another region shows to be behind or truncated,
    or from a region that holds content but no journal, unless the loss is accepted. Returns
    when every epoch seen started."""
    losses: list[str] = []
    seen = [] if read.epoch is None else [read.epoch.started_at]
    seen += [epoch.started_at for epoch in read.older]
    if read.incomplete is not None:
        seen.append(read.incomplete.started_at)
    for region in others:
        try:
            found, segments = journal.epochs(region.store)
        except RegistryError as error:
            losses.append(f"{region.name}'s journal could not be compared ({error})")
            continue
        if not found:
            continue
        seen += [epoch.started_at for epoch in found]
        newer = read.epoch is None or found[-1].started_at > read.epoch.started_at
        if newer and not journal.usable(found[-1], segments):
            losses.append(
                f"{region.name} holds a newer journal epoch ({found[-1].epoch[:12]}) whose "
                "rewrite was interrupted: no region may hold the catalog's latest journal"
            )
        whole = [epoch for epoch in found if journal.usable(epoch, segments)]
        if not whole:
            continue
        newest = whole[-1]
        end = journal.contiguous_end(segments.get(newest.epoch, []))
        if read.epoch is None or newest.started_at > read.epoch.started_at:
            losses.append(
                f"{region.name} holds a newer journal (epoch {newest.epoch[:12]}, up to entry "
                f"{end})"
            )
        elif newest.epoch == read.epoch.epoch and end > read.end:
            losses.append(
                f"{region.name} holds a longer journal (entries up to {end}, {source} up to "
                f"{read.end})"
            )
    if read.epoch is None and records:
        losses.append(f"{source} holds version records but no journal")
    if not losses:
        return seen
    if not accept_loss:
        raise IntegrityError(
            f"rebuilding from {source} would lose catalog changes: {'; '.join(losses)}",
            hint="rebuild from the region named, or pass --accept-loss to rebuild from "
            f"{source} anyway (what only the other journal holds is then lost)",
        )
    if not quiet:
        for loss in losses:
            log.warning("accepted loss: %s", loss)
    report.accepted_loss.extend(losses)
    return seen


def _open_region(
    settings: Settings,
    region: RegionSettings,
    key_provider: ProviderFactory,
    naming_key: bytes | None,
) -> Region:
    """A region opened and checked to be this registry's store (the naming key from its file,
    else, when None is given and the file is lost, unwrapped from the store)."""
    driver = open_driver(
        region.store,
        parallelism=settings.effective_workers,
        fail_fast=True,
        deadlines=settings.deadlines,
    )
    try:
        keys = key_provider(region)
        if naming_key is None:
            if settings.naming_key_file.exists():
                naming_key = read_key_file(settings.naming_key_file, label="naming key")
            else:
                naming_key = stored_naming_key(driver, keys, registry_id=settings.registry_id)
        store = _store(settings, driver, keys, naming_key)
        store.check_claim()
    except BaseException:
        driver.close()
        raise
    return Region(region.name, store)


def _store(settings: Settings, driver: Any, keys: KeyProvider, naming_key: bytes) -> BlobStore:
    return BlobStore(
        driver,
        keys,
        registry_id=settings.registry_id,
        naming_key=naming_key,
        chunk_size=settings.chunk_size,
        workers=settings.effective_workers,
    )


@dataclass(frozen=True)
class _Record:
    name: str
    object_name: str
    model: str
    digest: str
    message: str
    pushed_by: str
    signed_by: str
    pushed_at: datetime


def _version_records(store: BlobStore) -> list[_Record]:
    """The store's version records that are not voided, oldest push first."""
    found = []
    names, voided = store.version_records()
    for name in names:
        if name in voided:
            continue
        data = store.read_version_record(name)
        try:
            raw = json.loads(data)
            record = _Record(
                name,
                str(raw["manifest_object"]),
                str(raw["model"]),
                str(raw["digest"]),
                str(raw["message"]),
                str(raw["pushed_by"]),
                str(raw["signed_by"]),
                datetime.fromisoformat(raw["pushed_at"]).astimezone(UTC),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IntegrityError(f"version record {name}: malformed ({error})", path=name) from None
        if not store.record_matches(name, record.digest):
            raise IntegrityError(
                f"version record {name} names another manifest than its place says", path=name
            )
        found.append(record)
    return sorted(found, key=lambda record: (record.pushed_at, record.name))


class _SlotMissingError(IntegrityError):
    pass


def _read_manifest(
    store: BlobStore, digest: str, settings: Settings, *, what: str
) -> tuple[Manifest, bytes] | None:
    """The manifest as `store` holds it, authenticated and its signature checked, with its
    signed envelope; None when the store holds no such manifest (swept, or never written
    there)."""
    if store.driver.stat(store.object_name(MANIFEST, digest)) is None:
        return None
    slot = store.read_slot(MANIFEST, digest, what=what)
    if slot is None:
        # Lost, not forged: reported as not restorable from this region, not a refusal.
        raise _SlotMissingError(f"{what}: its key slot is missing from the store", path=what)
    data = store.read_bytes(MANIFEST, digest, slot, what=what)
    manifest, _signer = manifests.parse_envelope(
        data, expected_digest=digest, trusted=settings.trusted_signers, what=what
    )
    return manifest, data


def _restore_records(
    restore: Restore,
    store: BlobStore,
    records: Sequence[_Record],
    settings: Settings,
    report: RebuildReport,
    *,
    cutoff: datetime | None,
    since: datetime | None = None,
) -> None:
    """Versions whose push wrote its record but whose catalog entry had not reached the
    journal: restored from the record and the manifest, numbered after the journal's.

    A record is not a lost version when the journal has its commit (a version of that content
    created at or after the push), when its content was a live version at the time of the
    push (a re-push makes no version), or when it is older than the journal's last entry by
    more than a commit can take (its commit would be in the journal: entries are drained in
    commit order), or older than the journal's epoch (the catalog that began it decided). Pushes
    that made no version void their records; these rules cover a push that died before it
    could."""
    for record in records:
        if cutoff is not None and record.pushed_at < cutoff - COMMIT_WINDOW:
            continue
        if since is not None and record.pushed_at < since:
            # Before the journal's epoch began: the catalog that started it (a rebuild, or
            # one an operator kept with --new-epoch, dropping what came after its backup)
            # already decided about this push.
            continue
        if restore.has_version(record.model, record.digest, pushed_at=record.pushed_at):
            continue
        what = f"manifest of {record.model} (version record {record.name})"
        try:
            found = _read_manifest(store, record.digest, settings, what=what)
        except _SlotMissingError as error:
            report.unrestored.append(error.message)
            continue
        if found is None:
            continue  # the push stopped before its manifest: nothing was committed
        manifest = found[0]
        if manifest.name != record.model:
            raise IntegrityError(f"{what}: names model {manifest.name}", path=record.name)
        now = record.pushed_at
        restore.ensure_model(record.model, at=now, by=record.pushed_by)
        for entry in manifest.files:
            if restore.needs_blob(entry.digest):
                # New, or swept since an expired version used it and stored again by this push.
                header = store.read_header(BLOB, entry.digest, size=entry.size, what=entry.path)
                stored = NewBlob(
                    entry.digest,
                    entry.size,
                    store.object_name(BLOB, entry.digest),
                    header.sealed_size,
                    header.chunk_size,
                    (),
                )
                restore.store_blob(stored, now)
        number = restore.add_version(
            NewVersion(
                name=record.model,
                digest=record.digest,
                manifest_object=record.object_name,
                manifest_slots=(),
                message=record.message,
                actor=record.pushed_by,
                signed_by=record.signed_by,
                total_size=manifest.total_size,
                tensor_count=manifest.tensor_count,
                parameter_count=manifest.parameter_count,
                dtypes=manifest.dtypes,
                files=[
                    FileRecord(f.path, f.size, f.digest, f.tensor_count) for f in manifest.files
                ],
                blobs=(),
            ),
            at=now,
            restored_from=record.name,
        )
        report.from_records.append(f"{record.model}@{number}")


def _check_manifests(
    restore: Restore, store: BlobStore, settings: Settings, report: RebuildReport
) -> None:
    """Every version's file list against its manifest in the store (authenticated, signed):
    a disagreement refuses the rebuild; a live version whose manifest or files the region
    lacks is reported as not restorable from it."""
    for version in restore.versions():
        ref = f"{version.name}@{version.number}"
        what = f"manifest of {ref}"
        try:
            found = _read_manifest(store, version.digest, settings, what=what)
        except _SlotMissingError as error:
            if version.expired_at is None:
                report.unrestored.append(f"{ref}: {error.message} ({report.region})")
            continue
        if found is None:
            if version.expired_at is None:
                report.unrestored.append(f"{ref}: its manifest is missing from {report.region}")
            continue
        manifest, envelope = found
        # What `show` reads: a rebuilt catalog answers it without a store, like the lost one.
        restore.cache_manifest(version.digest, envelope)
        listed = {f.path: (f.size, f.digest, f.tensor_count) for f in manifest.files}
        journaled = {f.path: (f.size, f.digest, f.tensor_count) for f in version.files}
        if manifest.name != version.name or listed != journaled:
            raise IntegrityError(
                f"{what}: the journal and the manifest disagree on its files", path=what
            )
        if version.expired_at is not None:
            continue
        for entry in manifest.files:
            blob = restore.blob(entry.digest)
            if blob is None or blob.swept_at is not None:
                report.unrestored.append(f"{ref}: {entry.path} is recorded as swept")
            elif store.driver.stat(blob.object_name) is None:
                report.unrestored.append(f"{ref}: {entry.path} is missing from {report.region}")


def _slots_and_placements(restore: Restore, replicas: ReplicaSet, report: RebuildReport) -> None:
    """Key slots as every reachable region stores them, and each copy read back in full and
    authenticated: verified with its ciphertext checksum, or bad (queued for repair)."""
    objects: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for version in restore.versions(by_id=True):
        live = version.expired_at is None
        candidates = []
        # An expired version's objects count until gc sweeps them (a swept manifest is gone
        # from every region; a swept blob is marked).
        if live or any(
            region.store.driver.stat(region.store.object_name(MANIFEST, version.digest))
            for region in replicas.regions
        ):
            candidates.append((version.digest, MANIFEST))
        for row in version.files:
            blob = restore.blob(row.digest)
            if live or (blob is not None and blob.swept_at is None):
                candidates.append((row.digest, BLOB))
        for digest, kind in candidates:
            if (digest, kind) not in seen:
                seen.add((digest, kind))
                objects.append((digest, kind, f"{kind} {digest[:19]}"))
    now = datetime.now(UTC)
    for digest, kind, what in objects:
        known: list[WrappedKey] = []
        for region in replicas.regions:
            try:
                # Every key's slot (during a rotation an object has two), as pushes record them.
                slots = region.store.read_slots(kind, digest, what=what)
            except (StorageError, IntegrityError) as error:
                report.bad_copies.append(f"{region.name}: {what}: key slot: {error}")
                continue
            for slot in slots:
                known.append(slot)
                restore.insert_key_slot(digest, kind, slot, now)
        if not known:
            report.unrestored.append(f"{what}: no region holds a key slot for it")
            continue
        placements = []
        for region in replicas.regions:
            outcome = replicas.check(region, kind, digest, known=known, checksum=None, what=what)
            if outcome.state == BAD:
                report.bad_copies.append(f"{region.name}: {what}: {outcome.detail}")
            placements.append(
                PlacementRecord(
                    digest,
                    kind,
                    region.name,
                    region.store.object_name(kind, digest),
                    outcome.state,
                    outcome.checksum,
                    outcome.detail,
                )
            )
        restore.add_placements(placements, now)
