"""The stores: scrub, drill, regions, replication, the journal and a catalog rebuild.

The journal's states and a rebuild's report are values of layers above this one
(`registry.journal`, `registry.rebuild`): their models are made from anything of their shape
(`RegionJournalLike`, `StoredJournalLike`, `RebuildLike`), which mypy checks where they are
made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from registry import reports
from registry.wire.base import Time, Wire, iso, maybe_iso


class RegionJournalLike(Protocol):
    """How far a region's journal goes by the catalog's marks (`registry.journal`)."""

    @property
    def region(self) -> str: ...
    @property
    def mark(self) -> int: ...
    @property
    def behind(self) -> int: ...
    @property
    def lag_seconds(self) -> float: ...
    @property
    def error(self) -> str: ...


class StoredJournalLike(Protocol):
    """What a region's store holds of the journal (`registry.journal`)."""

    @property
    def region(self) -> str: ...
    @property
    def epoch(self) -> str | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def end(self) -> int: ...
    @property
    def newest_at(self) -> datetime | None: ...
    @property
    def epochs(self) -> int: ...
    @property
    def error(self) -> str: ...
    @property
    def behind(self) -> str: ...


class RebuildLike(Protocol):
    """What a catalog rebuild did (`registry.rebuild`)."""

    @property
    def region(self) -> str: ...
    @property
    def catalog(self) -> str: ...
    @property
    def entries(self) -> int: ...
    @property
    def segments(self) -> int: ...
    @property
    def restored(self) -> Mapping[str, int]: ...
    @property
    def from_records(self) -> Sequence[str]: ...
    @property
    def unrestored(self) -> Sequence[str]: ...
    @property
    def probed(self) -> Sequence[str]: ...
    @property
    def unreachable(self) -> Sequence[str]: ...
    @property
    def bad_copies(self) -> Sequence[str]: ...
    @property
    def accepted_loss(self) -> Sequence[str]: ...
    @property
    def journal(self) -> Sequence[str]: ...
    @property
    def seconds(self) -> float: ...
    @property
    def ok(self) -> bool: ...


# -- stores: scrub, drill, regions, replication, journal, rebuild ------------------------------


class ScrubProblem(Wire, kw_only=True):
    region: str
    kind: str
    digest: str
    object: str
    problem: str
    versions: list[str]  # the live versions it breaks


class Orphan(Wire, kw_only=True):
    region: str
    object: str
    size: int
    modified: Time


class ScrubReport(Wire, kw_only=True):
    ok: bool
    read_data: bool
    objects: int
    copies: int
    sampled_percent: float | None
    problems: list[ScrubProblem]
    orphans: list[Orphan]
    unchecked: list[str]

    @classmethod
    def of(cls, report: reports.ScrubReport) -> ScrubReport:
        return cls(
            ok=report.ok,
            read_data=report.read_data,
            objects=report.objects,
            copies=report.copies,
            sampled_percent=report.sampled,
            problems=[
                ScrubProblem(
                    region=p.region,
                    kind=p.kind,
                    digest=p.digest,
                    object=p.name,
                    problem=p.problem,
                    versions=list(p.versions),
                )
                for p in report.problems
            ],
            orphans=[
                Orphan(region=o.region, object=o.name, size=o.size, modified=iso(o.modified))
                for o in report.orphans
            ],
            unchecked=list(report.unchecked),
        )


class DrillModel(Wire, kw_only=True):
    name: str
    ref: str
    via: str
    ok: bool
    files: int
    bytes: int
    seconds: float
    problems: list[str]


class DrillReport(Wire, kw_only=True):
    ok: bool
    region: str
    mode: str
    seconds: float
    at: Time
    models: list[DrillModel]

    @classmethod
    def of(cls, report: reports.DrillReport) -> DrillReport:
        return cls(
            ok=report.ok,
            region=report.region,
            mode=report.mode,
            seconds=round(report.seconds, 3),
            at=iso(report.at),
            models=[
                DrillModel(
                    name=m.name,
                    ref=m.ref,
                    via=m.via,
                    ok=m.ok,
                    files=m.files,
                    bytes=m.bytes,
                    seconds=round(m.seconds, 3),
                    problems=list(m.problems),
                )
                for m in report.models
            ],
        )


class RegionStatus(Wire, kw_only=True):
    """A region's health, and its copies by state (null: no catalog to count them from)."""

    name: str
    priority: int
    store: str
    keys: str
    state: str
    reachable: bool
    detail: str
    seconds: float
    counted: bool
    verified: int | None
    pending: int | None
    bad: int | None
    missing: int | None
    complete: bool

    @classmethod
    def of(cls, r: reports.RegionStatus) -> RegionStatus:
        return cls(
            name=r.name,
            priority=r.priority,
            store=r.store,
            keys=r.keys,
            state=r.state,
            reachable=r.reachable,
            detail=r.detail,
            seconds=round(r.seconds, 3),
            counted=r.counted,
            verified=r.verified if r.counted else None,
            pending=r.pending if r.counted else None,
            bad=r.bad if r.counted else None,
            missing=r.missing if r.counted else None,
            complete=r.complete,
        )


class ReplicateReport(Wire, kw_only=True):
    ok: bool
    objects: int
    copied: int
    repaired: int
    verified: int
    problems: list[str]

    @classmethod
    def of(cls, report: reports.ReplicateReport) -> ReplicateReport:
        return cls(
            ok=report.ok,
            objects=report.objects,
            copied=report.copied,
            repaired=report.repaired,
            verified=report.verified,
            problems=list(report.problems),
        )


class JournalState(Wire, kw_only=True):
    """How far a region's journal goes by the catalog's marks."""

    region: str
    journal_seq: int
    behind: int
    lag_seconds: float
    error: str

    @classmethod
    def of(cls, s: RegionJournalLike) -> JournalState:
        return cls(
            region=s.region,
            journal_seq=s.mark,
            behind=s.behind,
            lag_seconds=round(s.lag_seconds, 3),
            error=s.error,
        )


class StoredJournal(Wire, kw_only=True):
    """What a region's store holds of the journal."""

    region: str
    epoch: str | None
    epoch_started_at: Time | None
    entries: int
    last_entry_at: Time | None
    epochs: int
    error: str
    behind: str

    @classmethod
    def of(cls, s: StoredJournalLike) -> StoredJournal:
        return cls(
            region=s.region,
            epoch=s.epoch,
            epoch_started_at=maybe_iso(s.started_at),
            entries=s.end,
            last_entry_at=maybe_iso(s.newest_at),
            epochs=s.epochs,
            error=s.error,
            behind=s.behind,
        )


class RebuildReport(Wire, kw_only=True):
    region: str
    catalog: str
    journal_entries: int
    journal_segments: int
    restored: dict[str, int]
    restored_from_version_records: list[str]
    not_restored: list[str]
    regions_probed: list[str]
    regions_unreachable: list[str]
    bad_copies: list[str]
    accepted_loss: list[str]
    journal_written_to: list[str]
    seconds: float
    ok: bool

    @classmethod
    def of(cls, r: RebuildLike) -> RebuildReport:
        return cls(
            region=r.region,
            catalog=r.catalog,
            journal_entries=r.entries,
            journal_segments=r.segments,
            restored=dict(r.restored),
            restored_from_version_records=list(r.from_records),
            not_restored=list(r.unrestored),
            regions_probed=list(r.probed),
            regions_unreachable=list(r.unreachable),
            bad_copies=list(r.bad_copies),
            accepted_loss=list(r.accepted_loss),
            journal_written_to=list(r.journal),
            seconds=round(r.seconds, 3),
            ok=r.ok,
        )
