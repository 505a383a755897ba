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
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, delete, func, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from registry import journal
from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST, BlobStore, stored_naming_key
from registry.catalog.db import create_catalog_engine, migrate
from registry.catalog.journal import (
    REDACTED_DETAILS,
    TABLES,
    TOKEN_ACTIONS,
    capture_session,
    decode_row,
    decode_value,
    parse_body,
    table,
    write_entry,
)
from registry.catalog.models import (
    AuditEvent,
    Blob,
    CachedManifest,
    JournalEntry,
    JournalEpoch,
    Model,
    Placement,
    Version,
    VersionFile,
    utcnow,
)
from registry.catalog.repository import Catalog, add_version, insert_key_slot, store_blob_row
from registry.config import RegionSettings, Settings
from registry.crypto.keys import KeyProvider, WrappedKey, read_key_file
from registry.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    RegistryError,
    StorageError,
)
from registry.manifest import Manifest
from registry.records import FileRecord, NewBlob, NewVersion
from registry.replication import BAD, Region, ReplicaSet
from registry.storage import deadline
from registry.storage.factory import open_driver

log = logging.getLogger("model_registry.rebuild")
# Longer than a push's commit can take (its retries included): a version record older than the
# journal's last entry by more than this had its commit journaled, or never committed.
COMMIT_WINDOW = timedelta(minutes=10)
EPOCH_STEP = timedelta(microseconds=1)
# Tables whose integer keys come from a sequence on PostgreSQL (moved past the restored rows).
_SERIAL = {"models": "id", "versions": "id", "alias_moves": "id", "audit_events": "id"}


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "catalog": self.catalog,
            "journal_entries": self.entries,
            "journal_segments": self.segments,
            "restored": self.restored,
            "restored_from_version_records": self.from_records,
            "not_restored": self.unrestored,
            "regions_probed": self.probed,
            "regions_unreachable": self.unreachable,
            "bad_copies": self.bad_copies,
            "accepted_loss": self.accepted_loss,
            "journal_written_to": self.journal,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
        }


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
    report = RebuildReport(source, _safe_url(catalog_url))
    order = sorted(settings.regions, key=lambda region: region.name != source)
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
        replicas = ReplicaSet(
            regions, workers=settings.effective_workers, deadlines=settings.deadlines
        )
        main = regions[0].store
        main.check_claim()
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
        with _Target(catalog_url, registry_id=settings.registry_id) as engine:
            with Session(engine) as session, session.begin():
                _replay(session, entries)
                _fix_sequences(session)
                # What the journal lacked is journaled in the new catalog, like any change.
                capture_session(session)
                _restore_records(
                    session,
                    main,
                    records,
                    settings,
                    report,
                    cutoff=cutoff,
                    since=None if read.epoch is None else read.epoch.started_at,
                )
                write_entry(session)
                if not stand_in:
                    _check_manifests(session, main, settings, report)
                    say("reading key slots and checking every copy in every region")
                    _slots_and_placements(session, replicas, report)
                _fix_sequences(session)
                # A journal of its own: written again, whole, under a new epoch, so nothing it
                # writes can collide with what a region holds of the old one.
                session.execute(delete(JournalEpoch))
                session.add(
                    JournalEpoch(
                        epoch=uuid.uuid4().hex,
                        # Later than every epoch seen, whatever this host's clock says: readers
                        # follow the newest.
                        started_at=max([utcnow(), *(t + EPOCH_STEP for t in seen_epochs)]),
                        parent=None if read.epoch is None else read.epoch.epoch,
                        reason=f"rebuilt from {source}",
                        base=session.scalar(select(func.max(JournalEntry.seq))) or 0,
                    )
                )
                report.restored = {
                    name: session.scalar(select(func.count()).select_from(table(name))) or 0
                    for name in (*TABLES, "key_slots", "placements")
                }
                links = [
                    (row.id, row.hash)
                    for row in session.execute(
                        select(AuditEvent.id, AuditEvent.hash)
                        .where(
                            AuditEvent.action.in_(sorted(TOKEN_ACTIONS)),
                            AuditEvent.details == REDACTED_DETAILS,
                        )
                        .order_by(AuditEvent.id)
                    )
                ]
            report.probed = [region.name for region in regions]
            if stand_in:
                report.seconds = time.monotonic() - started
                return report
            catalog = Catalog(engine)
            # Its own transaction, through the catalog: audited and journaled like any change.
            # `links` names the token events restored as chain links (audit verify trusts
            # those, and only those).
            catalog.audit(
                actor,
                "catalog-rebuild",
                "registry",
                {
                    "from": source,
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
        # The catalog is in place (committed, moved) before its journal is written: a rebuild
        # that stops now leaves a catalog whose next command drains, not a half-written epoch
        # and no catalog.
        say("writing the new catalog's journal to every region")
        final = Catalog(create_catalog_engine(catalog_url))
        try:
            report.journal = [
                f"{state.region}: {state.error}" if state.error else state.region
                for state in journal.drain(final, [(r.name, r.store) for r in regions])
            ]
        finally:
            final.close()
        report.seconds = time.monotonic() - started
    finally:
        for region in regions:
            region.store.driver.close()
    return report


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


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        raise InvalidInputError(
            f"{url!r} is not a database URL",
            hint="sqlite:////path/catalog.db or postgresql+psycopg://user@host/database",
        ) from None


class _Target:
    """The new catalog's engine: refused unless empty; SQLite built beside its final path."""

    def __init__(self, url: str, *, registry_id: str) -> None:
        self.url = make_url(url)
        self.registry_id = registry_id
        self.final: Path | None = None
        self.building: Path | None = None
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            self.final = Path(str(self.url.database))
            self.building = self.final.with_name(self.final.name + ".rebuilding")

    def __enter__(self) -> Engine:
        if self.final is not None and self.building is not None:
            if self.final.exists() and self.final.stat().st_size > 0:
                raise ConflictError(
                    f"the catalog {self.final} exists; a rebuild never overwrites one",
                    hint="move it aside (keep it: it may hold what the stores lack), or pass "
                    "--catalog with a new database",
                )
            self.building.parent.mkdir(parents=True, exist_ok=True)
            self.building.unlink(missing_ok=True)
            url = self.url.set(database=str(self.building))
        else:
            url = self.url
        shown = self.url.render_as_string(hide_password=True)
        try:
            self.engine = create_catalog_engine(url.render_as_string(hide_password=False))
        except (SQLAlchemyError, ValueError) as error:
            raise InvalidInputError(
                f"cannot use {shown} as a catalog: {error}",
                hint="a SQLAlchemy URL: sqlite:////path/catalog.db or "
                "postgresql+psycopg://user@host/database",
            ) from None
        try:
            _require_empty(self.engine, shown)
            migrate(self.engine, registry_id=self.registry_id)
        except OperationalError as error:
            self.engine.dispose()
            raise StorageError(
                f"cannot reach the catalog database {shown}: {error.orig}",
                hint="create the database first (an empty one), and check the URL",
            ) from None
        except BaseException:
            self.engine.dispose()
            raise
        return self.engine

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.engine.dispose()
        if self.building is None or self.final is None:
            return
        if exc_type is None:
            os.replace(self.building, self.final)
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self.building) + suffix).unlink(missing_ok=True)


def _require_empty(engine: Engine, shown: str) -> None:
    with engine.connect() as connection:
        present = set(inspect(connection).get_table_names())
        for name in ("models", "audit_events", "journal_entries"):
            if (
                name in present
                and connection.execute(select(func.count()).select_from(table(name))).scalar()
            ):
                raise ConflictError(
                    f"the catalog {shown} is not empty; a rebuild never writes over one",
                    hint="pass --catalog with a new, empty database",
                )


def _replay(session: Session, entries: Sequence[journal.Entry]) -> None:
    """Apply every entry in order: its rows written over the same keys, its deletions done."""
    for entry in entries:
        try:
            rows, deleted = parse_body(entry.body)
            for name in TABLES:
                target = table(name)
                for raw in rows.get(name, []):
                    values = decode_row(name, raw)
                    keys = target.primary_key.columns
                    condition = [column == values[column.name] for column in keys]
                    result = session.execute(update(target).where(*condition).values(**values))
                    done = cast(CursorResult[Any], result).rowcount
                    if not done:
                        session.execute(target.insert().values(**values))
            for name in reversed(TABLES):
                target = table(name)
                for key in deleted.get(name, []):
                    columns = list(target.primary_key.columns)
                    if len(key) != len(columns):
                        raise ValueError(f"a key of {name} has {len(key)} parts")
                    session.execute(
                        target.delete().where(
                            *[
                                column == decode_value(column.type, value)
                                for column, value in zip(columns, key, strict=True)
                            ]
                        )
                    )
            session.add(JournalEntry(seq=entry.seq, at=entry.at, body=entry.body))
            session.flush()
        except (ValueError, KeyError, TypeError, SQLAlchemyError) as error:
            raise IntegrityError(
                f"journal entry {entry.seq} (in {entry.segment}) cannot be applied: {error}",
                path=entry.segment,
            ) from None


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
    session: Session,
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
        model = session.scalar(select(Model).where(Model.name == record.model))
        if model is not None:
            same = session.scalars(
                select(Version).where(Version.model_id == model.id, Version.digest == record.digest)
            ).all()
            if any(
                v.created_at >= record.pushed_at
                or v.expired_at is None
                or v.expired_at > record.pushed_at
                for v in same
            ):
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
        if model is None:
            model = Model(name=record.model, created_at=now, created_by=record.pushed_by)
            session.add(model)
            session.flush()
        for entry in manifest.files:
            blob = session.get(Blob, entry.digest)
            if blob is None or blob.swept_at is not None:
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
                store_blob_row(session, stored, now)
        version = add_version(
            session,
            model,
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
        report.from_records.append(f"{record.model}@{version.number}")


def _check_manifests(
    session: Session, store: BlobStore, settings: Settings, report: RebuildReport
) -> None:
    """Every version's file list against its manifest in the store (authenticated, signed):
    a disagreement refuses the rebuild; a live version whose manifest or files the region
    lacks is reported as not restorable from it."""
    versions = session.scalars(select(Version).order_by(Version.model_id, Version.number)).all()
    for version in versions:
        model = session.get(Model, version.model_id)
        assert model is not None
        ref = f"{model.name}@{version.number}"
        what = f"manifest of {ref}"
        files = {
            row.path: row
            for row in session.scalars(
                select(VersionFile).where(VersionFile.version_id == version.id)
            )
        }
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
        if session.get(CachedManifest, version.digest) is None:
            # What `show` reads: a rebuilt catalog answers it without a store, like the lost one.
            session.add(CachedManifest(digest=version.digest, envelope=envelope))
        listed = {f.path: (f.size, f.digest, f.tensor_count) for f in manifest.files}
        journaled = {path: (row.size, row.digest, row.tensor_count) for path, row in files.items()}
        if manifest.name != model.name or listed != journaled:
            raise IntegrityError(
                f"{what}: the journal and the manifest disagree on its files", path=what
            )
        if version.expired_at is not None:
            continue
        for entry in manifest.files:
            blob = session.get(Blob, entry.digest)
            if blob is None or blob.swept_at is not None:
                report.unrestored.append(f"{ref}: {entry.path} is recorded as swept")
            elif store.driver.stat(blob.object_name) is None:
                report.unrestored.append(f"{ref}: {entry.path} is missing from {report.region}")


def _slots_and_placements(session: Session, replicas: ReplicaSet, report: RebuildReport) -> None:
    """Key slots as every reachable region stores them, and each copy read back in full and
    authenticated: verified with its ciphertext checksum, or bad (queued for repair)."""
    objects: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for version in session.scalars(select(Version).order_by(Version.id)):
        live = version.expired_at is None
        candidates = []
        # An expired version's objects count until gc sweeps them (a swept manifest is gone
        # from every region; a swept blob is marked).
        if live or any(
            region.store.driver.stat(region.store.object_name(MANIFEST, version.digest))
            for region in replicas.regions
        ):
            candidates.append((version.digest, MANIFEST))
        for row in session.scalars(select(VersionFile).where(VersionFile.version_id == version.id)):
            blob = session.get(Blob, row.digest)
            if live or (blob is not None and blob.swept_at is None):
                candidates.append((row.digest, BLOB))
        for digest, kind in candidates:
            if (digest, kind) not in seen:
                seen.add((digest, kind))
                objects.append((digest, kind, f"{kind} {digest[:19]}"))
    now = utcnow()
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
                insert_key_slot(session, digest, kind, slot, now)
        if not known:
            report.unrestored.append(f"{what}: no region holds a key slot for it")
            continue
        for region in replicas.regions:
            outcome = replicas.check(region, kind, digest, known=known, checksum=None, what=what)
            if outcome.state == BAD:
                report.bad_copies.append(f"{region.name}: {what}: {outcome.detail}")
            session.add(
                Placement(
                    digest=digest,
                    purpose=kind,
                    region=region.name,
                    object_name=region.store.object_name(kind, digest),
                    state=outcome.state,
                    checksum=outcome.checksum,
                    detail=outcome.detail[:4000],
                    updated_at=now,
                )
            )
        session.flush()


def _fix_sequences(session: Session) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    for name, column in _SERIAL.items():
        session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "  # noqa: S608
                f"COALESCE((SELECT MAX({column}) FROM {name}), 0) + 1, false)"
            )
        )
