"""Tags and search: what `tag add|rm|ls` and `search` print, and what the API answers about
them."""

from __future__ import annotations

from typing import Any

from registry import records, reports
from registry.wire.base import Time, Wire, iso, parse_time
from registry.wire.versions import Version


class Tag(Wire, kw_only=True):
    """A tag on a version: who added it, when."""

    ref: str
    name: str
    number: int
    tag: str
    added_at: Time
    added_by: str

    @staticmethod
    def fields_of(record: records.TagRecord) -> dict[str, Any]:
        """The fields of a tag, for the models that extend it."""
        return {
            "ref": record.ref,
            "name": record.name,
            "number": record.number,
            "tag": record.tag,
            "added_at": iso(record.added_at),
            "added_by": record.added_by,
        }

    @classmethod
    def of(cls, record: records.TagRecord) -> Tag:
        return cls(**cls.fields_of(record))

    def to_record(self) -> records.TagRecord:
        return records.TagRecord(
            self.name, self.number, self.tag, parse_time(self.added_at), self.added_by
        )


class TagChange(Tag, kw_only=True):
    """A tag added or removed; `changed` false: the version already had it (nothing done)."""

    changed: bool

    @classmethod
    def of(cls, change: reports.TagChange) -> TagChange:  # type: ignore[override]
        return cls(**Tag.fields_of(change.tag), changed=change.changed)

    def to_report(self) -> reports.TagChange:
        return reports.TagChange(self.to_record(), self.changed)


class SearchMatch(Wire, kw_only=True):
    """Why a version is a hit: `field` is `name` (its model's), `tag`, `meta` (with `key`) or
    `message` (`value`: the part of it around the word)."""

    field: str
    value: str
    key: str | None = None


class SearchHit(Version, kw_only=True):
    """A version a search found, and every reason it matched."""

    matches: list[SearchMatch]

    @classmethod
    def of(cls, hit: records.SearchHit) -> SearchHit:  # type: ignore[override]
        return cls(
            **Version.fields_of(hit.version),
            matches=[SearchMatch(field=m.field, value=m.value, key=m.key) for m in hit.matches],
        )

    def to_hit(self) -> records.SearchHit:
        return records.SearchHit(
            self.to_record(),
            tuple(records.SearchMatch(m.field, m.value, m.key) for m in self.matches),
        )


class SearchResult(Wire, kw_only=True):
    """A search: the hits, newest first, and whether more matched than the limit shows."""

    query: str
    hits: list[SearchHit]
    more: bool

    @classmethod
    def of(cls, result: reports.SearchResult) -> SearchResult:
        return cls(
            query=result.query, hits=[SearchHit.of(h) for h in result.hits], more=result.more
        )

    def to_report(self) -> reports.SearchResult:
        return reports.SearchResult(self.query, tuple(h.to_hit() for h in self.hits), self.more)
