"""Aliases and the lifecycle of versions: alias moves, retention policies and their plans, legal
holds, gc."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from registry import records, reports, retention
from registry.wire.base import (
    Duration,
    Time,
    Wire,
    duration_text,
    iso,
    maybe_iso,
    maybe_parse_duration,
    maybe_parse_time,
    parse_time,
)

# -- aliases ---------------------------------------------------------------------------------------


class Alias(Wire, kw_only=True):
    model: str
    alias: str
    version: int
    digest: str
    protected: bool
    updated_at: Time
    updated_by: str

    @staticmethod
    def fields_of(a: records.AliasRecord) -> dict[str, Any]:
        return {
            "model": a.name,
            "alias": a.alias,
            "version": a.number,
            "digest": a.digest,
            "protected": a.protected,
            "updated_at": iso(a.updated_at),
            "updated_by": a.updated_by,
        }

    @classmethod
    def of(cls, record: records.AliasRecord) -> Alias:
        return cls(**cls.fields_of(record))

    def to_record(self) -> records.AliasRecord:
        return records.AliasRecord(
            self.model,
            self.alias,
            self.version,
            self.digest,
            self.protected,
            parse_time(self.updated_at),
            self.updated_by,
        )


class AliasMove(Wire, kw_only=True):
    """One move of an alias: `version` where it pointed after, `previous` before (null: new)."""

    model: str
    alias: str
    kind: str
    version: int
    previous: int | None
    moved_at: Time
    moved_by: str
    reason: str

    @classmethod
    def of(cls, m: records.AliasMoveRecord) -> AliasMove:
        return cls(
            model=m.name,
            alias=m.alias,
            kind=m.kind,
            version=m.number,
            previous=m.previous,
            moved_at=iso(m.moved_at),
            moved_by=m.moved_by,
            reason=m.reason,
        )

    def to_record(self) -> records.AliasMoveRecord:
        return records.AliasMoveRecord(
            self.model,
            self.alias,
            self.kind,
            self.version,
            self.previous,
            parse_time(self.moved_at),
            self.moved_by,
            self.reason,
        )


class AliasChange(Alias, kw_only=True):
    """An alias after a promote or rollback, and the move made (null: it already pointed
    there)."""

    moved: bool
    move: AliasMove | None
    undelivered: list[str] = msgspec.field(default_factory=list)
    unlocked: list[str] = msgspec.field(default_factory=list)

    @classmethod
    def of(cls, change: reports.AliasChange) -> AliasChange:  # type: ignore[override]
        return cls(
            **Alias.fields_of(change.alias),
            moved=change.move is not None,
            move=None if change.move is None else AliasMove.of(change.move),
            undelivered=list(change.undelivered),
            unlocked=list(change.unlocked),
        )

    def to_report(self) -> reports.AliasChange:
        return reports.AliasChange(
            None if self.move is None else self.move.to_record(),
            self.to_record(),
            tuple(self.undelivered),
            tuple(self.unlocked),
        )


# -- retention, holds, gc, delete --------------------------------------------------------------


class Policy(Wire, kw_only=True):
    """A retention policy: its rules (null: not set) and, in words, what it keeps."""

    keep_last: int | None
    keep_within: Duration | None
    keep_demoted_for: Duration | None
    policy: str

    @staticmethod
    def fields_of(policy: retention.Policy) -> dict[str, Any]:
        return {
            "keep_last": policy.keep_last,
            "keep_within": duration_text(policy.keep_within),
            "keep_demoted_for": duration_text(policy.keep_demoted_for),
            "policy": policy.describe(),
        }

    def to_policy(self) -> retention.Policy:
        return retention.Policy(
            self.keep_last,
            maybe_parse_duration(self.keep_within),
            maybe_parse_duration(self.keep_demoted_for),
        )


class ModelPolicy(Policy, kw_only=True):
    """The policy of a model (`*`: the registry-wide default)."""

    model: str

    @classmethod
    def of(cls, model: str, policy: retention.Policy) -> ModelPolicy:
        return cls(model=model, **Policy.fields_of(policy))


class Retention(ModelPolicy, kw_only=True):
    """The policy in force for a model and where it comes from (the model, `*` or `none`)."""

    source: str

    @classmethod
    def of(cls, model: str, policy: retention.Policy, source: str) -> Retention:  # type: ignore[override]
        return cls(model=model, source=source, **Policy.fields_of(policy))


class Decision(Wire, kw_only=True):
    """Whether a version is kept and why: at least `until` (the latest date a dated rule
    gives) and, when `open_ended`, for as long as an undated rule (keep-last, an alias, a
    hold) holds."""

    version: int
    keep: bool
    reasons: list[str]
    until: Time | None = None
    open_ended: bool = False

    @classmethod
    def of(cls, d: retention.Decision) -> Decision:
        return cls(
            version=d.number,
            keep=d.keep,
            reasons=list(d.reasons),
            until=maybe_iso(d.until),
            open_ended=d.open_ended,
        )

    def to_decision(self) -> retention.Decision:
        return retention.Decision(
            self.version,
            self.keep,
            tuple(self.reasons),
            maybe_parse_time(self.until),
            self.open_ended,
        )


class RetentionPlan(ModelPolicy, kw_only=True):
    """A dry run of a model's policy: which versions it keeps, and why."""

    versions: list[Decision]

    @classmethod
    def of(  # type: ignore[override]
        cls, model: str, policy: retention.Policy, decisions: Iterable[retention.Decision]
    ) -> RetentionPlan:
        return cls(
            model=model,
            versions=[Decision.of(d) for d in decisions],
            **Policy.fields_of(policy),
        )

    def to_plan(self) -> tuple[str, retention.Policy, list[retention.Decision]]:
        return self.model, self.to_policy(), [d.to_decision() for d in self.versions]


class Hold(Wire, kw_only=True):
    """A legal hold on a version."""

    model: str
    version: int
    ref: str
    digest: str
    reason: str
    placed_by: str
    placed_at: Time

    @staticmethod
    def fields_of(h: records.HoldRecord) -> dict[str, Any]:
        return {
            "model": h.name,
            "version": h.number,
            "ref": h.ref,
            "digest": h.digest,
            "reason": h.reason,
            "placed_by": h.placed_by,
            "placed_at": iso(h.placed_at),
        }

    @classmethod
    def of(cls, record: records.HoldRecord) -> Hold:
        return cls(**cls.fields_of(record))

    def to_record(self) -> records.HoldRecord:
        return records.HoldRecord(
            self.model,
            self.version,
            self.digest,
            self.reason,
            self.placed_by,
            parse_time(self.placed_at),
        )


class HoldResult(Hold, kw_only=True):
    """A hold placed or released: whether it changed, on how many objects, and the regions
    where it could not be applied."""

    changed: bool
    objects: int
    failed_regions: list[str]

    @classmethod
    def of(cls, result: reports.HoldResult) -> HoldResult:  # type: ignore[override]
        return cls(
            **Hold.fields_of(result.hold),
            changed=result.changed,
            objects=result.objects,
            failed_regions=list(result.failed_regions),
        )

    def to_report(self) -> reports.HoldResult:
        return reports.HoldResult(
            self.to_record(), self.changed, self.objects, tuple(self.failed_regions)
        )


class SweptObject(Wire, kw_only=True):
    """An object gc deleted (or would delete), and its bytes per region."""

    purpose: str
    digest: str
    bytes: int
    regions: dict[str, int]


class RegionReason(Wire, kw_only=True):
    region: str
    reason: str


class KeptObject(Wire, kw_only=True):
    """An unreferenced object gc left in place, why, and which regions keep it."""

    purpose: str
    digest: str
    reason: str
    # A server from before per-region reasons sends none.
    regions: list[RegionReason] = msgspec.field(default_factory=list)


class GcReport(Wire, kw_only=True):
    dry_run: bool
    grace: Duration
    expired: list[str]  # references of the versions expired
    locks_extended: int
    swept: list[SweptObject]
    bytes_reclaimed: int
    kept: list[KeptObject]
    problems: list[str]

    @classmethod
    def of(cls, report: reports.GcReport) -> GcReport:
        return cls(
            dry_run=report.dry_run,
            grace=retention.format_duration(report.grace),
            expired=[v.ref for v in report.expired],
            locks_extended=report.locks_extended,
            swept=[
                SweptObject(
                    purpose=s.purpose, digest=s.digest, bytes=s.bytes, regions=dict(s.sizes)
                )
                for s in report.swept
            ],
            bytes_reclaimed=report.bytes_reclaimed,
            kept=[
                KeptObject(
                    purpose=k.purpose,
                    digest=k.digest,
                    reason=k.reason,
                    regions=[RegionReason(region=r, reason=why) for r, why in k.regions],
                )
                for k in report.kept
            ],
            problems=list(report.problems),
        )

    def to_report(self, expired: Sequence[records.VersionRecord]) -> reports.GcReport:
        """The report, with the records of the `expired` references (looked up by the caller)."""
        return reports.GcReport(
            self.dry_run,
            retention.parse_duration(self.grace),
            tuple(expired),
            self.locks_extended,
            tuple(
                reports.SweptObject(s.purpose, s.digest, tuple(s.regions.items()))
                for s in self.swept
            ),
            tuple(
                reports.KeptObject(
                    k.purpose, k.digest, k.reason, tuple((r.region, r.reason) for r in k.regions)
                )
                for k in self.kept
            ),
            tuple(self.problems),
        )
