"""Retention policies and what they expire: policies set and read, each model's retention plan made
from what one transaction reads, and versions tombstoned (expired by the policy, or deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased, selectinload

from registry.catalog.audit import append_audit
from registry.catalog.models import (
    Alias,
    AliasMove,
    LegalHold,
    Model,
    RetentionPolicy,
    Version,
    utcnow,
)
from registry.catalog.parts import (
    details_json,
    expired_error,
    version_record,
    version_row,
)
from registry.catalog.versions import VersionsPart
from registry.errors import NotFoundError, RetentionError
from registry.records import DEFAULT_POLICY, VersionRecord
from registry.refs import Reference
from registry.retention import Decision, Policy, VersionFacts, last_demotions, plan


class ExpiryPart(VersionsPart):
    """Retention policies, plans, expiry and deletion."""

    def set_retention(self, model: str, policy: Policy, *, actor: str) -> None:
        """Replace the policy of `model` ("*": the default), audited in the same transaction."""

        def seconds(value: timedelta | None) -> int | None:
            return None if value is None else int(value.total_seconds())

        def work(session: Session) -> None:
            if (
                model != DEFAULT_POLICY
                and session.scalar(select(Model.id).where(Model.name == model)) is None
            ):
                raise NotFoundError(f"model {model} does not exist")
            row = session.get(RetentionPolicy, model)
            if row is None:
                row = RetentionPolicy(model=model)
                session.add(row)
            row.keep_last = policy.keep_last
            row.keep_within_seconds = seconds(policy.keep_within)
            row.keep_demoted_for_seconds = seconds(policy.keep_demoted_for)
            row.updated_at = utcnow()
            row.updated_by = actor
            append_audit(
                session,
                at=row.updated_at,
                actor=actor,
                action="retention",
                subject=model if model != DEFAULT_POLICY else "registry",
                details=details_json({"policy": policy.describe(), "model": model}),
            )

        self._retrying(work, what=f"retention of {model}")

    def retention(self, model: str) -> tuple[Policy, str]:
        """The policy in force for `model` and where it comes from: the model's own, the
        default ("*"), or none."""
        with self._read() as session:
            for source in (model, DEFAULT_POLICY):
                row = session.get(RetentionPolicy, source)
                if row is not None:
                    return (
                        Policy(
                            row.keep_last,
                            _delta(row.keep_within_seconds),
                            _delta(row.keep_demoted_for_seconds),
                        ),
                        source,
                    )
        return Policy(), "none"

    def retention_plan(
        self, name: str, *, now: datetime, locked_for: timedelta | None
    ) -> tuple[Policy, list[Decision]]:
        """The policy in force for `name` and which of its live versions it keeps and why."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            return _plan_in(session, model, now=now, locked_for=locked_for)

    def retention_decisions(
        self, name: str, numbers: Sequence[int], *, now: datetime, locked_for: timedelta | None
    ) -> dict[int, Decision]:
        """What the policy decides for the live versions among `numbers` (a page of them), as
        `retention_plan` would, reading only those versions and how many live ones are newer
        (what keep-last counts), not the whole model."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            _policy, decisions = _plan_in(
                session, model, now=now, locked_for=locked_for, numbers=numbers
            )
        return {d.number: d for d in decisions}

    def expire_versions(
        self,
        name: str,
        *,
        now: datetime,
        locked_for: timedelta | None,
        actor: str,
        only: set[int] | None = None,
    ) -> list[VersionRecord]:
        """Tombstone the versions of `name` that its retention policy no longer keeps (of
        those in `only`, when given). The plan is made again inside the transaction, so an alias
        moved or a hold placed a moment ago is seen; each expiry is audited."""

        def work(session: Session) -> list[VersionRecord]:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            policy, decisions = _plan_in(session, model, now=now, locked_for=locked_for)
            rows = {v.number: v for v in _live_versions(session, model)}
            expired = []
            for decision in decisions:
                if decision.keep or (only is not None and decision.number not in only):
                    continue
                version = rows[decision.number]
                _tombstone(
                    session,
                    version,
                    actor=actor,
                    reason="expired by the retention policy",
                    action="expire",
                    details={
                        "version": version.number,
                        "digest": version.digest,
                        "policy": policy.describe(),
                    },
                    now=now,
                )
                expired.append(version_record(version))
            return expired

        return self._retrying(work, what=f"expire versions of {name}")

    def delete_version(
        self,
        ref: Reference,
        *,
        reason: str,
        actor: str,
        locked_for: timedelta | None,
        dry_run: bool = False,
    ) -> VersionRecord:
        """Tombstone one version on an admin's word, unless an alias, a hold or a retention
        rule keeps it (the rule "no policy: keep everything" does not stand in the way of an
        explicit delete). `dry_run`: the same refusals, nothing changed."""
        target = self.resolve(ref)

        def work(session: Session) -> VersionRecord:
            version = version_row(session, target)
            if version.expired_at is not None:
                raise expired_error(version)
            now = utcnow()
            _policy, decisions = _plan_in(session, version.model, now=now, locked_for=locked_for)
            reasons = next(d.reasons for d in decisions if d.number == version.number)
            keeping = [r for r in reasons if r != NO_RULE]
            if keeping:
                raise RetentionError(
                    f"{target.ref} is kept: {'; '.join(keeping)}",
                    hint="move its aliases, release its hold or change the retention policy "
                    f"first (`model-registry retention plan {target.name}` explains)",
                )
            if dry_run:
                return version_record(version)
            _tombstone(
                session,
                version,
                actor=actor,
                reason=f"deleted: {reason}",
                action="delete",
                details={"version": version.number, "digest": version.digest, "reason": reason},
                now=now,
            )
            return version_record(version)

        return self._retrying(work, what=f"delete {ref}")


NO_RULE = "no retention rule"


def _live_versions(session: Session, model: Model) -> list[Version]:
    return list(
        session.scalars(
            select(Version)
            .where(Version.model_id == model.id, Version.expired_at.is_(None))
            .options(selectinload(Version.files), selectinload(Version.model))
            .order_by(Version.number)
        )
    )


def _plan_inputs(
    session: Session, model: Model
) -> tuple[Policy, dict[int, list[str]], dict[int, datetime], set[int]]:
    """What a plan needs besides the versions: the policy in force, the aliases at each
    version number, when each was last demoted, and the numbers under hold. Only the versions
    those name are read, not the model's every version."""
    policy = Policy()
    for source in (model.name, DEFAULT_POLICY):
        row = session.get(RetentionPolicy, source)
        if row is not None:
            policy = Policy(
                row.keep_last,
                _delta(row.keep_within_seconds),
                _delta(row.keep_demoted_for_seconds),
            )
            break
    target, before = aliased(Version), aliased(Version)
    pointed: dict[int, list[str]] = {}
    for alias, number in session.execute(
        select(Alias.name, target.number)
        .join(target, target.id == Alias.version_id)
        .where(Alias.model_id == model.id)
    ):
        pointed.setdefault(number, []).append(alias)
    demoted = last_demotions(
        (previous, number, moved_at)
        for previous, number, moved_at in session.execute(
            select(before.number, target.number, AliasMove.moved_at)
            .join(target, target.id == AliasMove.version_id)
            .outerjoin(before, before.id == AliasMove.previous_version_id)
            .where(AliasMove.model_id == model.id)
        )
    )
    held = set(
        session.scalars(select(Version.number).join(LegalHold).where(Version.model_id == model.id))
    )
    return policy, pointed, demoted, held


def _plan_in(
    session: Session,
    model: Model,
    *,
    now: datetime,
    locked_for: timedelta | None,
    numbers: Sequence[int] | None = None,
) -> tuple[Policy, list[Decision]]:
    """The retention plan of one model from what this transaction reads: of every live
    version, or (`numbers`) of those among them alone, ranked for keep-last by a count of the
    live versions newer than them rather than by reading those."""
    policy, pointed, demoted, held = _plan_inputs(session, model)
    live = (Version.model_id == model.id) & Version.expired_at.is_(None)
    if numbers is not None:
        live = live & Version.number.in_(numbers)
    # Only what the planner reads: a model of thousands of versions is planned from two
    # columns, not from every version's files.
    facts = [
        VersionFacts(number, created_at)
        for number, created_at in session.execute(
            select(Version.number, Version.created_at).where(live)
        )
    ]
    ranks = None
    if numbers is not None and facts:
        newest = max(f.number for f in facts)
        above = session.scalar(
            select(func.count())
            .select_from(Version)
            .where(
                Version.model_id == model.id,
                Version.expired_at.is_(None),
                Version.number > newest,
            )
        )
        ordered = sorted((f.number for f in facts), reverse=True)
        ranks = {number: (above or 0) + rank for rank, number in enumerate(ordered)}
    decisions = plan(
        facts,
        policy=policy,
        aliased=pointed,
        demoted=demoted,
        held=held,
        now=now,
        locked_for=locked_for,
        ranks=ranks,
    )
    return policy, decisions


def _tombstone(
    session: Session,
    version: Version,
    *,
    actor: str,
    reason: str,
    action: str,
    details: dict[str, Any],
    now: datetime,
) -> None:
    version.expired_at = now
    version.expired_by = actor
    version.expiry_reason = reason
    session.flush()
    append_audit(
        session,
        at=now,
        actor=actor,
        action=action,
        subject=version.model.name,
        details=details_json(details),
    )


def _delta(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)
