"""The journal in the stores: the catalog's outbox entries copied, sealed and write-once, to every
region (`drain`), and read back from one region, checked whole, for a rebuild (`read`).

The journal of a catalog lives under `journal/<epoch>/`: a marker `start` (when the epoch began,
and the one before it), then segments `<first>-<last>` holding entries first..last as canonical
JSON, sealed with AES-256-GCM under a key derived from the naming key and bound to the object's
name (`BlobStore.put_journal_segment`). Segments are written in order and never rewritten, so a
region holds a prefix of the epoch's journal; a drain that stored a segment but stopped before
recording it writes the same entries again later, possibly in a longer segment (readers accept
overlaps whose entries agree).

A catalog starts a new epoch when it is rebuilt, and when an operator keeps a catalog restored
from a backup (`catalog journal --new-epoch`): its whole journal is then written again under the
new epoch, and readers follow the newest epoch. A drain never starts one by itself: a store that
holds entries the catalog lacks, other entries under the same numbers, or a newer epoch means the
catalog is behind the stores (restored from a backup, or another catalog writes them), and the
drain refuses with `CatalogBehindError` before anything is written. A region found to hold less
than its mark says (replaced by an empty store) is written again from where it stops. A gap, a
segment or marker that does not open, or two different entries with one number is a refused
journal, named.

Regions are drained in parallel, each within its requests' deadlines; a region known to be down
is not asked and keeps its mark.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from registry.blobstore import BlobStore
from registry.catalog.journal import parse_body
from registry.catalog.lite import CatalogReads
from registry.catalog.repository import Catalog
from registry.errors import CatalogBehindError, ConflictError, IntegrityError, RegistryError
from registry.records import JournalEpochRecord
from registry.storage import deadline

SEGMENT_FORMAT = "model-registry/journal-segment/v1"
EPOCH_FORMAT = "model-registry/journal-epoch/v1"
SEGMENT_ENTRIES = 1000
SEGMENT_BYTES = 8 * 1024 * 1024
log = logging.getLogger("model_registry.journal")


@dataclass(frozen=True)
class Entry:
    seq: int
    at: datetime
    body: str
    segment: str = ""  # the object it was read from


@dataclass(frozen=True)
class Epoch:
    epoch: str
    started_at: datetime
    parent: str | None
    base: int  # entries 1..base must be there before the epoch is a usable journal


@dataclass(frozen=True)
class Journal:
    """A region's journal: the entries of its newest usable epoch, the epochs it supersedes,
    and a newer epoch whose rewrite had not reached its base (when one was passed over)."""

    epoch: Epoch | None
    entries: list[Entry]
    older: list[Epoch] = field(default_factory=list)
    incomplete: Epoch | None = None

    @property
    def end(self) -> int:
        return self.entries[-1].seq if self.entries else 0


@dataclass(frozen=True)
class RegionJournal:
    """How far one region's journal goes and how far behind the catalog it is."""

    region: str
    mark: int
    behind: int
    oldest_pending: datetime | None
    error: str = ""
    rewritten: str = ""  # what a check of the store found and set right

    @property
    def lag_seconds(self) -> float:
        if self.oldest_pending is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.oldest_pending).total_seconds())


@dataclass(frozen=True)
class StoredJournal:
    """What one region's store holds of the journal, read without a catalog: its newest usable
    epoch, how far that epoch runs without a gap, and when its last entry was made."""

    region: str
    epoch: str | None
    started_at: datetime | None
    end: int
    newest_at: datetime | None
    epochs: int
    error: str = ""
    behind: str = ""  # what another region's store holds beyond it, if anything


def summary(region: str, store: BlobStore) -> StoredJournal:
    """A region's journal as its store holds it (see `StoredJournal`); reads the epoch markers
    and the last segment only."""
    found, segments = epochs(store)
    whole = [epoch for epoch in found if usable(epoch, segments)]
    if not whole:
        return StoredJournal(region, None, None, 0, None, len(found))
    newest = whole[-1]
    end = contiguous_end(segments.get(newest.epoch, []))
    newest_at = None
    last = [s for s in segments.get(newest.epoch, []) if s[0] <= end <= s[1]]
    if last:
        first, final, name = max(last)
        entries = _read_segment(store, newest.epoch, first, final, name)
        newest_at = next((e.at for e in entries if e.seq == end), None)
    return StoredJournal(region, newest.epoch, newest.started_at, end, newest_at, len(found))


def encode_segment(registry_id: str, epoch: str, entries: Sequence[Entry]) -> bytes:
    return json.dumps(
        {
            "format": SEGMENT_FORMAT,
            "registry": registry_id,
            "epoch": epoch,
            "entries": [
                {"seq": e.seq, "at": e.at.astimezone(UTC).isoformat(), "body": e.body}
                for e in entries
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def encode_epoch(registry_id: str, epoch: JournalEpochRecord) -> bytes:
    return json.dumps(
        {
            "format": EPOCH_FORMAT,
            "registry": registry_id,
            "epoch": epoch.epoch,
            "started_at": epoch.started_at.astimezone(UTC).isoformat(),
            "parent": epoch.parent,
            "base": epoch.base,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_segment(
    data: bytes, *, registry_id: str, epoch: str, first: int, last: int, name: str
) -> list[Entry]:
    """The entries of a segment, checked: its format, registry, epoch, numbering, bodies."""

    def refuse(why: str) -> IntegrityError:
        return IntegrityError(f"journal segment {name}: {why}", path=name)

    try:
        raw = json.loads(data)
        if raw.get("format") != SEGMENT_FORMAT:
            raise refuse("unknown format")
        if raw.get("registry") != registry_id or raw.get("epoch") != epoch:
            raise refuse(f"written by registry {raw.get('registry')!r} in another place")
        entries = [
            Entry(int(item["seq"]), datetime.fromisoformat(item["at"]), str(item["body"]), name)
            for item in raw["entries"]
        ]
        for entry in entries:
            parse_body(entry.body)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise refuse(f"malformed ({error})") from None
    if [e.seq for e in entries] != list(range(first, last + 1)):
        raise refuse(f"does not hold entries {first} to {last} in order")
    return entries


def _read_segment(store: BlobStore, epoch: str, first: int, last: int, name: str) -> list[Entry]:
    """A stored segment's entries, opened and checked (`decode_segment`)."""
    return decode_segment(
        store.read_journal_object(name),
        registry_id=store.registry_id,
        epoch=epoch,
        first=first,
        last=last,
        name=name,
    )


def _decode_epoch(data: bytes, *, registry_id: str, epoch: str, name: str) -> Epoch:
    try:
        raw = json.loads(data)
        if raw.get("format") != EPOCH_FORMAT or raw.get("registry") != registry_id:
            raise ValueError("not this registry's epoch marker")
        if raw.get("epoch") != epoch:
            raise ValueError("names another epoch")
        parent = raw.get("parent")
        return Epoch(
            epoch,
            datetime.fromisoformat(raw["started_at"]).astimezone(UTC),
            None if parent is None else str(parent),
            int(raw["base"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(
            f"journal epoch marker {name}: malformed ({error})", path=name
        ) from None


def epochs(store: BlobStore) -> tuple[list[Epoch], dict[str, list[tuple[int, int, str]]]]:
    """The store's journal epochs that have their marker, oldest first (markers opened and
    checked), and the segments of every epoch. An epoch without a marker is a rewrite that
    began writing before its marker reached the store: it is not a journal yet, and is left out
    (its writer puts the marker when it next drains)."""
    listing = store.journal_listing()
    found = []
    for epoch, (start, _segments) in listing.items():
        if start is None:
            continue
        data = store.read_journal_object(start)
        found.append(_decode_epoch(data, registry_id=store.registry_id, epoch=epoch, name=start))
    found.sort(key=lambda e: (e.started_at, e.epoch))
    return found, {epoch: segments for epoch, (_start, segments) in listing.items()}


def usable(epoch: Epoch, segments: dict[str, list[tuple[int, int, str]]]) -> bool:
    """Whether a region holds an epoch at least up to its base (its rewrite finished)."""
    return contiguous_end(segments.get(epoch.epoch, [])) >= epoch.base


def contiguous_end(segments: Sequence[tuple[int, int, str]]) -> int:
    """How far a list of segments goes from entry 1 without a gap, by their names alone."""
    end = 0
    for first, last, _name in sorted(segments):
        if first > end + 1:
            break
        end = max(end, last)
    return end


def read(store: BlobStore, *, allow_incomplete: bool = False) -> Journal:
    """The store's journal: every entry of its newest epoch, in order from 1, verified;
    IntegrityError naming the object that fails, the entries missing, two segments that
    disagree, or a newest epoch whose rewrite stopped short of its base (with
    `allow_incomplete`, the newest usable epoch before it is read instead)."""
    found, segments = epochs(store)
    if not found:
        return Journal(None, [])
    newest = found[-1]
    incomplete = None
    if not usable(newest, segments):
        name = store.journal_start_name(newest.epoch)
        if not allow_incomplete:
            raise IntegrityError(
                f"journal epoch {newest.epoch} holds entries up to "
                f"{contiguous_end(segments.get(newest.epoch, []))} of its first {newest.base}: "
                "its rewrite was interrupted",
                hint="rebuild from a region whose journal is whole, or accept the loss "
                "(--accept-loss reads the epoch before it)",
                path=name,
            )
        incomplete = newest
        complete = [e for e in found[:-1] if usable(e, segments)]
        if not complete:
            return Journal(None, [], found, incomplete)
        newest = complete[-1]
        found = [e for e in found if e.started_at <= newest.started_at]
    entries: list[Entry] = []
    by_seq: dict[int, Entry] = {}
    for first, last, name in segments.get(newest.epoch, []):
        if first > len(entries) + 1:
            where = f"after {by_seq[len(entries)].segment}" if entries else "at the start"
            raise IntegrityError(
                f"the journal lacks entries {len(entries) + 1} to {first - 1} ({where}, "
                f"before {name}): a segment was deleted",
                path=name,
            )
        for entry in _read_segment(store, newest.epoch, first, last, name):
            known = by_seq.get(entry.seq)
            if known is not None:
                if known.body != entry.body:
                    raise IntegrityError(
                        f"journal segments {known.segment} and {name} disagree on entry "
                        f"{entry.seq}",
                        path=name,
                    )
                continue
            by_seq[entry.seq] = entry
            entries.append(entry)
    return Journal(newest, entries, found[:-1], incomplete)


def audit_rows(store: BlobStore) -> dict[int, dict[str, Any]]:
    """The audit entries the store's journal holds (its newest usable epoch, read whole and
    checked as for a rebuild), by id, as journaled (JSON values): the write-once copy that
    `audit verify` holds the catalog's chain against."""
    found: dict[int, dict[str, Any]] = {}
    for entry in read(store, allow_incomplete=True).entries:
        try:
            rows, _deleted = parse_body(entry.body)
        except ValueError:
            raise IntegrityError(
                f"journal entry {entry.seq} is not a journal entry", path=entry.segment
            ) from None
        for row in rows.get("audit_events", []):
            if isinstance(row, dict) and isinstance(row.get("id"), int):
                found[row["id"]] = row
    return found


def drain(
    catalog: CatalogReads,
    stores: Sequence[tuple[str, BlobStore]],
    *,
    check: Collection[str] = (),
    skip: Mapping[str, str] | None = None,
    write: bool = True,
) -> list[RegionJournal]:
    """Copy every outbox entry a region lacks to that region, the regions in parallel. For the
    regions named in `check`, and for a region that holds nothing of the current epoch yet, the
    store is compared with the mark first: a store holding less is
    written again from where it stops; one holding entries the catalog lacks raises
    `CatalogBehindError` (nothing is written). A region that fails, or is in `skip` (name:
    why), keeps its mark and is reported. Without `write`, the stores are only compared:
    nothing is written to them, and no mark moves (a status), and `catalog` may be its reads
    alone (`catalog.lite`: a load compares before its first tensor without SQLAlchemy)."""
    current = catalog.journal_epoch()
    marks = catalog.journal_marks()
    head = catalog.journal_head()
    skipped = skip or {}

    def one(region: str, store: BlobStore) -> RegionJournal:
        if region in skipped:
            mark = marks.get(region, 0)
            return _state(catalog, region, mark, head, error=skipped[region])
        return _drain_region(
            catalog,
            region,
            store,
            current,
            marks.get(region, 0),
            head,
            region in check,
            write=write,
        )

    futures = [deadline.submit(functools.partial(one, region, store)) for region, store in stores]
    states: list[RegionJournal] = []
    behind: CatalogBehindError | None = None
    for future in futures:
        try:
            states.append(future.result())
        except CatalogBehindError as error:
            behind = behind or error
    if behind is not None:
        raise behind
    return states


def _drain_region(
    catalog: CatalogReads,
    region: str,
    store: BlobStore,
    current: JournalEpochRecord,
    mark: int,
    head: int,
    check: bool,
    *,
    write: bool = True,
) -> RegionJournal:
    epoch = current.epoch
    error = rewritten = ""
    try:
        if check or mark == 0:
            mark, rewritten = _reconcile(catalog, region, store, current, mark, head, write=write)
        while write and mark < head:
            batch = _batch(_writable(catalog), mark)
            if not batch:
                break
            first, last = batch[0].seq, batch[-1].seq
            data = encode_segment(store.registry_id, epoch, batch)
            if not store.put_journal_segment(epoch, first, last, data):
                _same_as_stored(store, epoch, batch, region)
            _writable(catalog).set_journal_mark(epoch, region, last)
            mark = last
    except CatalogBehindError:
        raise
    except RegistryError as failure:
        error = str(failure)
        log.warning("journal of region %s stays at entry %d: %s", region, mark, failure)
    return _state(catalog, region, mark, head, error=error, rewritten=rewritten)


def _state(
    catalog: CatalogReads,
    region: str,
    mark: int,
    head: int,
    *,
    error: str = "",
    rewritten: str = "",
) -> RegionJournal:
    return RegionJournal(
        region, mark, max(0, head - mark), catalog.journal_oldest_after(mark), error, rewritten
    )


def _reconcile(
    catalog: CatalogReads,
    region: str,
    store: BlobStore,
    current: JournalEpochRecord,
    mark: int,
    head: int,
    *,
    write: bool = True,
) -> tuple[int, str]:
    """The mark the store's journal supports (its epoch marker put first, if missing): less
    when it lost segments (they are written again), more when a drain stored a segment and
    stopped before recording it. `CatalogBehindError` when it holds what the catalog lacks."""
    epoch = current.epoch
    found, segments = epochs(store)
    newest = found[-1] if found else None
    if newest is not None and newest.epoch != epoch and newest.started_at > current.started_at:
        if catalog.journal_epoch().epoch != epoch:
            # Another process of this catalog started the epoch during this drain.
            raise ConflictError(
                f"journal epoch {newest.epoch[:12]} began during this drain; the next drain "
                "writes it"
            )
        raise CatalogBehindError(
            f"region {region} holds a newer journal epoch ({newest.epoch[:12]}, started "
            f"{newest.started_at:%Y-%m-%d %H:%M:%S} UTC) than this catalog's ({epoch[:12]}): "
            "the catalog was restored from a backup older than a rebuild, or another catalog "
            "writes this registry's stores"
        )
    if epoch not in {e.epoch for e in found} and write:
        store.put_journal_start(epoch, encode_epoch(store.registry_id, current))
    end = contiguous_end(segments.get(epoch, []))
    if end > head:
        # Another process of this catalog may have committed and drained meanwhile.
        head = catalog.journal_head()
    if end > head:
        raise CatalogBehindError(
            f"region {region} holds journal entries up to {end} of epoch {epoch[:12]}, but the "
            f"catalog ends at entry {head}: it lacks {end - head} changes (it was restored from "
            "a backup, or another catalog writes this registry's stores)"
        )
    if end < mark:
        if write:
            _writable(catalog).set_journal_mark(epoch, region, end, exactly=True)
        note = f"the store held entries up to {end} only, not {mark}: written again"
        log.warning("journal of region %s: %s", region, note)
        return end, note
    if end > mark:
        beyond = [s for s in segments[epoch] if s[1] > mark and s[0] <= end]
        ours = {seq: body for seq, _at, body in catalog.journal_after(mark, limit=end - mark)}
        for first, last, name in beyond:
            for entry in _read_segment(store, epoch, first, last, name):
                if entry.seq > mark and ours.get(entry.seq) != entry.body:
                    raise _diverged(region, f"entry {entry.seq} in {name}")
        if write:
            _writable(catalog).set_journal_mark(epoch, region, end)
        return end, ""
    return mark, ""


def _diverged(region: str, where: str) -> CatalogBehindError:
    return CatalogBehindError(
        f"region {region} holds another {where} than the catalog: the catalog was restored "
        "from a backup and changed since, or another catalog writes this registry's stores"
    )


def _same_as_stored(store: BlobStore, epoch: str, batch: Sequence[Entry], region: str) -> None:
    first, last = batch[0].seq, batch[-1].seq
    name = store.journal_segment_name(epoch, first, last)
    stored = _read_segment(store, epoch, first, last, name)
    if [e.body for e in stored] != [e.body for e in batch]:
        raise _diverged(region, f"entries {first} to {last} ({name})")


def status(catalog: Catalog, regions: Sequence[str]) -> list[RegionJournal]:
    marks = catalog.journal_marks()
    head = catalog.journal_head()
    return [_state(catalog, region, marks.get(region, 0), head) for region in regions]


def _writable(catalog: CatalogReads) -> Catalog:
    if not isinstance(catalog, Catalog):
        raise TypeError("writing the journal needs the catalog itself, not its reads alone")
    return catalog


def _batch(catalog: Catalog, mark: int) -> list[Entry]:
    batch: list[Entry] = []
    size = 0
    for seq, at, body in catalog.journal_after(mark, limit=SEGMENT_ENTRIES):
        if batch and size + len(body) > SEGMENT_BYTES:
            break
        batch.append(Entry(seq, at, body))
        size += len(body)
    return batch
