"""The journal in the stores: the catalog's outbox entries copied, sealed and write-once, to every
region (`drain`), and read back from one region, checked whole, for a rebuild (`read`).

A segment is one object `journal/<first>-<last>` holding entries first..last as canonical JSON,
sealed with AES-256-GCM under a key derived from the naming key and bound to the object's name
(`BlobStore.put_journal_segment`). Segments are written in order and never rewritten, so a region
holds a prefix of the journal; a drain that stored a segment but crashed before recording it
writes the same entries again later, possibly in a longer segment (readers accept overlaps whose
entries agree). A gap, a segment that does not open, or two different entries with one number is
a refused journal, named.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from registry.blobstore import BlobStore
from registry.catalog.journal import parse_body
from registry.catalog.repository import Catalog
from registry.errors import IntegrityError, RegistryError

SEGMENT_FORMAT = "model-registry/journal-segment/v1"
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
class RegionJournal:
    """How far one region's journal goes and how far behind the catalog it is."""

    region: str
    mark: int
    behind: int
    oldest_pending: datetime | None
    error: str = ""

    @property
    def lag_seconds(self) -> float:
        if self.oldest_pending is None:
            return 0.0
        return max(0.0, (datetime.now(UTC) - self.oldest_pending).total_seconds())


def encode_segment(registry_id: str, entries: Sequence[Entry]) -> bytes:
    return json.dumps(
        {
            "format": SEGMENT_FORMAT,
            "registry": registry_id,
            "entries": [
                {"seq": e.seq, "at": e.at.astimezone(UTC).isoformat(), "body": e.body}
                for e in entries
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_segment(
    data: bytes, *, registry_id: str, first: int, last: int, name: str
) -> list[Entry]:
    """The entries of a segment, checked: its format, registry, numbering and every body."""

    def refuse(why: str) -> IntegrityError:
        return IntegrityError(f"journal segment {name}: {why}", path=name)

    try:
        raw = json.loads(data)
        if raw.get("format") != SEGMENT_FORMAT:
            raise refuse("unknown format")
        if raw.get("registry") != registry_id:
            raise refuse(f"written by registry {raw.get('registry')!r}")
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


def drain(catalog: Catalog, stores: Sequence[tuple[str, BlobStore]]) -> list[RegionJournal]:
    """Copy every outbox entry a region lacks to that region; a region that fails keeps its
    mark (the next drain starts there) and is reported with the error."""
    marks = catalog.journal_marks()
    head, _at = catalog.journal_head()
    states = []
    for region, store in stores:
        mark = marks.get(region, 0)
        error = ""
        try:
            while mark < head:
                batch = _batch(catalog, mark)
                if not batch:
                    break
                store.put_journal_segment(
                    batch[0].seq, batch[-1].seq, encode_segment(store.registry_id, batch)
                )
                catalog.set_journal_mark(region, batch[-1].seq)
                mark = batch[-1].seq
        except RegistryError as failure:
            error = str(failure)
            log.warning("journal of region %s stays at entry %d: %s", region, mark, failure)
        states.append(
            RegionJournal(
                region, mark, max(0, head - mark), catalog.journal_oldest_after(mark), error
            )
        )
    return states


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


def read(store: BlobStore) -> list[Entry]:
    """Every entry of the store's journal, in order from 1, verified; IntegrityError naming
    the segment that fails, the entries missing, or two segments that disagree."""
    entries: list[Entry] = []
    by_seq: dict[int, tuple[Entry, str]] = {}
    for first, last, name in store.journal_segments():
        if first > len(entries) + 1:
            where = f"after {by_seq[len(entries)][1]}" if entries else "at the start"
            raise IntegrityError(
                f"the journal lacks entries {len(entries) + 1} to {first - 1} ({where}, "
                f"before {name}): a segment was deleted",
                path=name,
            )
        data = store.read_journal_segment(name)
        for entry in decode_segment(
            data, registry_id=store.registry_id, first=first, last=last, name=name
        ):
            known = by_seq.get(entry.seq)
            if known is not None:
                if known[0].body != entry.body:
                    raise IntegrityError(
                        f"journal segments {known[1]} and {name} disagree on entry {entry.seq}",
                        path=name,
                    )
                continue
            by_seq[entry.seq] = (entry, name)
            entries.append(entry)
    return entries


def contiguous_end(store: BlobStore) -> int:
    """How far a store's journal goes without a gap, by its segments' names alone."""
    end = 0
    for first, last, _name in store.journal_segments():
        if first > end + 1:
            break
        end = max(end, last)
    return end
