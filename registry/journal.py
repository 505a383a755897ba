"""The journal in the stores: the catalog's outbox entries copied, sealed and write-once, to every
region (`drain`), and read back from one region, checked whole, for a rebuild (`read`).

The journal of a catalog lives under `journal/<epoch>/`: a marker `start` (when the epoch began,
and the one before it), then segments `<first>-<last>` holding entries first..last as canonical
JSON, sealed with AES-256-GCM under a key derived from the naming key and bound to the object's
name (`BlobStore.put_journal_segment`). Segments are written in order and never rewritten, so a
region holds a prefix of the epoch's journal; a drain that stored a segment but stopped before
recording it writes the same entries again later, possibly in a longer segment (readers accept
overlaps whose entries agree).

A catalog starts a new epoch when it is rebuilt, and when a drain finds that a store holds
entries the catalog does not (it was restored from a backup, or rebuilt from a region that was
behind): its whole journal is then written again under the new epoch, and readers follow the
newest epoch. A region found to hold less than its mark says (replaced by an empty store) is
written again from where it stops. A gap, a segment or marker that does not open, or two different
entries with one number is a refused journal, named.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from registry.blobstore import BlobStore
from registry.catalog.journal import parse_body
from registry.catalog.repository import Catalog
from registry.errors import IntegrityError, RegistryError

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
    reason: str


@dataclass(frozen=True)
class Journal:
    """A region's journal: its newest epoch's entries, and the epochs it supersedes."""

    epoch: Epoch | None
    entries: list[Entry]
    older: list[Epoch] = field(default_factory=list)

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


class _DivergedError(Exception):
    """The store holds journal entries that differ from the catalog's."""


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


def encode_epoch(registry_id: str, epoch: str, started_at: datetime, parent: str | None) -> bytes:
    return json.dumps(
        {
            "format": EPOCH_FORMAT,
            "registry": registry_id,
            "epoch": epoch,
            "started_at": started_at.astimezone(UTC).isoformat(),
            "parent": parent,
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
            "",
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(
            f"journal epoch marker {name}: malformed ({error})", path=name
        ) from None


def epochs(store: BlobStore) -> tuple[list[Epoch], dict[str, list[tuple[int, int, str]]]]:
    """The store's journal epochs, oldest first (markers opened and checked), and the segments
    of each. IntegrityError names a marker that does not open, or an epoch without one."""
    listing = store.journal_listing()
    found = []
    for epoch, (start, _segments) in listing.items():
        if start is None:
            name = store.journal_start_name(epoch)
            raise IntegrityError(
                f"journal epoch {epoch} has segments but no marker {name}", path=name
            )
        data = store.read_journal_object(start)
        found.append(_decode_epoch(data, registry_id=store.registry_id, epoch=epoch, name=start))
    found.sort(key=lambda e: (e.started_at, e.epoch))
    return found, {epoch: segments for epoch, (_start, segments) in listing.items()}


def contiguous_end(segments: Sequence[tuple[int, int, str]]) -> int:
    """How far a list of segments goes from entry 1 without a gap, by their names alone."""
    end = 0
    for first, last, _name in sorted(segments):
        if first > end + 1:
            break
        end = max(end, last)
    return end


def read(store: BlobStore) -> Journal:
    """The store's journal: every entry of its newest epoch, in order from 1, verified;
    IntegrityError naming the object that fails, the entries missing, or two segments that
    disagree."""
    found, segments = epochs(store)
    if not found:
        return Journal(None, [])
    newest = found[-1]
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
        data = store.read_journal_object(name)
        for entry in decode_segment(
            data,
            registry_id=store.registry_id,
            epoch=newest.epoch,
            first=first,
            last=last,
            name=name,
        ):
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
    return Journal(newest, entries, found[:-1])


def drain(
    catalog: Catalog, stores: Sequence[tuple[str, BlobStore]], *, check: bool = False
) -> list[RegionJournal]:
    """Copy every outbox entry a region lacks to that region. With `check` (and for a region
    that holds nothing yet) the store is compared with the mark first: a store holding less is
    written again from where it stops; one holding other entries makes the catalog start a new
    epoch. A region that fails keeps its mark and is reported with the error."""
    try:
        return _drain(catalog, stores, check=check)
    except _DivergedError as diverged:
        log.warning("starting a new journal epoch: %s", diverged)
        catalog.start_journal_epoch(reason=str(diverged), actor="model-registry")
        return _drain(catalog, stores, check=False)


def _drain(
    catalog: Catalog, stores: Sequence[tuple[str, BlobStore]], *, check: bool
) -> list[RegionJournal]:
    epoch, started = catalog.journal_epoch()
    marks = catalog.journal_marks()
    head, _at = catalog.journal_head()
    states = []
    for region, store in stores:
        mark = marks.get(region, 0)
        error = rewritten = ""
        try:
            if check or mark == 0:
                mark, rewritten = _reconcile(catalog, region, store, epoch, mark, head)
            if mark == 0 and head:
                store.put_journal_start(
                    epoch, encode_epoch(store.registry_id, epoch, started, _parent(catalog))
                )
            while mark < head:
                batch = _batch(catalog, mark)
                if not batch:
                    break
                first, last = batch[0].seq, batch[-1].seq
                data = encode_segment(store.registry_id, epoch, batch)
                if not store.put_journal_segment(epoch, first, last, data):
                    _same_as_stored(store, epoch, batch)
                catalog.set_journal_mark(region, last)
                mark = last
        except _DivergedError:
            raise
        except RegistryError as failure:
            error = str(failure)
            log.warning("journal of region %s stays at entry %d: %s", region, mark, failure)
        states.append(
            RegionJournal(
                region,
                mark,
                max(0, head - mark),
                catalog.journal_oldest_after(mark),
                error,
                rewritten,
            )
        )
    return states


def _parent(catalog: Catalog) -> str | None:
    return catalog.journal_epoch_parent()


def _reconcile(
    catalog: Catalog, region: str, store: BlobStore, epoch: str, mark: int, head: int
) -> tuple[int, str]:
    """The mark the store's journal supports: less when it lost segments (they are written
    again), more when a drain stored a segment and stopped before recording it."""
    found, segments = epochs(store)
    if found and found[-1].epoch != epoch and found[-1].started_at > catalog.journal_epoch()[1]:
        raise IntegrityError(
            f"region {region} holds a newer journal epoch ({found[-1].epoch}, started "
            f"{found[-1].started_at:%Y-%m-%d %H:%M:%S} UTC) than this catalog's: another "
            "catalog writes this registry's stores",
            hint="find the other catalog; two catalogs must never serve one registry",
        )
    end = contiguous_end(segments.get(epoch, []))
    if end < mark:
        catalog.set_journal_mark(region, end, exactly=True)
        note = f"the store held entries up to {end} only, not {mark}: written again"
        log.warning("journal of region %s: %s", region, note)
        return end, note
    if end > mark:
        beyond = [s for s in segments[epoch] if s[1] > mark and s[0] <= end]
        ours = {seq: body for seq, _at, body in catalog.journal_after(mark, limit=end - mark)}
        for first, last, name in beyond:
            for entry in decode_segment(
                store.read_journal_object(name),
                registry_id=store.registry_id,
                epoch=epoch,
                first=first,
                last=last,
                name=name,
            ):
                if entry.seq > mark and ours.get(entry.seq) != entry.body:
                    raise _DivergedError(
                        f"region {region} holds a different entry {entry.seq} of journal epoch "
                        f"{epoch} than the catalog (the catalog was restored from a backup or "
                        "rebuilt from a region that was behind)"
                    )
        catalog.set_journal_mark(region, end)
        return end, ""
    return mark, ""


def _same_as_stored(store: BlobStore, epoch: str, batch: Sequence[Entry]) -> None:
    first, last = batch[0].seq, batch[-1].seq
    name = store.journal_segment_name(epoch, first, last)
    stored = decode_segment(
        store.read_journal_object(name),
        registry_id=store.registry_id,
        epoch=epoch,
        first=first,
        last=last,
        name=name,
    )
    if [e.body for e in stored] != [e.body for e in batch]:
        raise _DivergedError(
            f"{name} holds other entries than the catalog's {first} to {last} (the catalog "
            "was restored from a backup or rebuilt from a region that was behind)"
        )


def status(catalog: Catalog, regions: Sequence[str]) -> list[RegionJournal]:
    marks = catalog.journal_marks()
    head, _at = catalog.journal_head()
    return [
        RegionJournal(
            region,
            marks.get(region, 0),
            max(0, head - marks.get(region, 0)),
            catalog.journal_oldest_after(marks.get(region, 0)),
        )
        for region in regions
    ]


def _batch(catalog: Catalog, mark: int) -> list[Entry]:
    batch: list[Entry] = []
    size = 0
    for seq, at, body in catalog.journal_after(mark, limit=SEGMENT_ENTRIES):
        if batch and size + len(body) > SEGMENT_BYTES:
            break
        batch.append(Entry(seq, at, body))
        size += len(body)
    return batch
