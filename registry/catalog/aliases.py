"""Aliases and their history: an alias moved (promote, rollback) with its move appended, audited and
its events queued in one transaction; aliases protected, listed and their moves read back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.catalog.audit import append_audit
from registry.catalog.models import Alias, AliasMove, EventDelivery, Model, Version, utcnow
from registry.catalog.parts import CatalogPart, details_json, expired_error, version_numbers
from registry.catalog.policies import check_signer
from registry.errors import ConflictError, NotFoundError, PermissionDeniedError
from registry.records import ROLLBACK, AliasMoveRecord, AliasRecord


class AliasesPart(CatalogPart):
    """Moving, protecting and listing aliases."""

    def move_alias(
        self,
        name: str,
        alias: str,
        *,
        kind: str,
        target: int | None,
        reason: str,
        actor: str,
        may_move_protected: bool,
        notify: Sequence[str] = (),
        event: Mapping[str, str] | None = None,
    ) -> tuple[AliasMoveRecord | None, AliasRecord]:
        """Point `alias` of model `name` at version `target` (a number), or, for a plain
        rollback (`target` None), at the version it pointed at before the current one.

        One transaction: the alias row is locked (SELECT ... FOR UPDATE on PostgreSQL, BEGIN
        IMMEDIATE on SQLite) and the move appended to the history, so concurrent moves of one
        alias serialise and the history stays one consistent chain. An event for each URL in
        `notify` is queued in the same transaction (`event` adds fields to it). Returns (the
        move, or None when the alias already pointed there, and the alias now)."""

        def work(session: Session) -> tuple[AliasMoveRecord | None, AliasRecord]:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            row = _locked_alias(session, model, alias, may_move_protected=may_move_protected)
            numbers = version_numbers(session, model.id)
            version_id = _destination(session, model, row, alias, target, numbers)
            destination = session.get(Version, version_id)
            assert destination is not None  # a row the catalog just named
            check_signer(session, name, alias, destination)
            now = utcnow()
            if row is not None and row.version_id == version_id:
                return None, _alias_record(name, row, numbers, session)
            previous = row.version_id if row is not None else None
            row = _point(session, model, row, alias, version_id, now=now, actor=actor)
            session.add(
                AliasMove(
                    model_id=model.id,
                    alias=alias,
                    kind=kind,
                    version_id=version_id,
                    previous_version_id=previous,
                    moved_at=now,
                    moved_by=actor,
                    reason=reason,
                )
            )
            details: dict[str, Any] = {
                "alias": alias,
                "version": numbers[version_id],
                "previous": None if previous is None else numbers[previous],
                "reason": reason,
            }
            append_audit(
                session,
                at=now,
                actor=actor,
                action=kind,
                subject=name,
                details=details_json(details),
            )
            session.flush()
            record = _alias_record(name, row, numbers, session)
            event_id = str(uuid.uuid4()) if notify else None
            move = AliasMoveRecord(
                name,
                alias,
                kind,
                numbers[version_id],
                None if previous is None else numbers[previous],
                now,
                actor,
                reason,
                event_id,
            )
            if event_id is not None:
                _queue_event(session, move, record, event_id, notify=notify, event=event)
            return move, record

        return self._retrying(work, what=f"move {name}:{alias}")

    def protect_alias(self, name: str, alias: str, *, protected: bool, actor: str) -> AliasRecord:
        def work(session: Session) -> AliasRecord:
            model = session.scalar(select(Model).where(Model.name == name))
            row = (
                None
                if model is None
                else session.scalar(
                    select(Alias)
                    .where(Alias.model_id == model.id, Alias.name == alias)
                    .with_for_update()
                )
            )
            if model is None or row is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}")
            numbers = version_numbers(session, model.id)
            if row.protected != protected:
                row.protected = protected
                append_audit(
                    session,
                    at=utcnow(),
                    actor=actor,
                    action="protect-alias" if protected else "unprotect-alias",
                    subject=name,
                    details=details_json({"alias": alias}),
                )
            return _alias_record(name, row, numbers, session)

        return self._retrying(work, what=f"protect {name}:{alias}")

    def aliases(self, name: str) -> list[AliasRecord]:
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            numbers = version_numbers(session, model.id)
            rows = session.scalars(
                select(Alias).where(Alias.model_id == model.id).order_by(Alias.name)
            ).all()
            return [_alias_record(name, row, numbers, session) for row in rows]

    def rollback_target(self, name: str, alias: str) -> int:
        """The version a plain rollback of the alias would move it to now (what a confirmation
        shows before the move): NotFoundError, ConflictError as the rollback itself."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            row = session.scalar(
                select(Alias).where(Alias.model_id == model.id, Alias.name == alias)
            )
            numbers = version_numbers(session, model.id)
            return numbers[_destination(session, model, row, alias, None, numbers)]

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRecord]:
        """Every move of the model's aliases (or of one), oldest first."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            numbers = version_numbers(session, model.id)
            query = select(AliasMove).where(AliasMove.model_id == model.id)
            if alias is not None:
                query = query.where(AliasMove.alias == alias)
            return [
                AliasMoveRecord(
                    name,
                    move.alias,
                    move.kind,
                    numbers[move.version_id],
                    None if move.previous_version_id is None else numbers[move.previous_version_id],
                    move.moved_at,
                    move.moved_by,
                    move.reason,
                )
                for move in session.scalars(query.order_by(AliasMove.id))
            ]


def _alias_stack(moves: Sequence[AliasMove]) -> list[int]:
    """The versions an alias went through, as a stack: a promote (or a rollback to a named
    version) pushes, a plain rollback pops; the top is where it points."""
    stack: list[int] = []
    for move in moves:
        if move.kind == ROLLBACK and len(stack) >= 2:
            stack.pop()
        else:
            stack.append(move.version_id)
    return stack


def _alias_record(name: str, row: Alias, numbers: dict[int, int], session: Session) -> AliasRecord:
    version = session.get(Version, row.version_id)
    assert version is not None
    return AliasRecord(
        name,
        row.name,
        numbers.get(row.version_id, version.number),
        version.digest,
        row.protected,
        row.updated_at,
        row.updated_by,
    )


def _locked_alias(
    session: Session, model: Model, alias: str, *, may_move_protected: bool
) -> Alias | None:
    """The alias row, locked for this transaction (None: a new alias); a protected one is
    refused unless `may_move_protected`."""
    row = session.scalar(
        select(Alias).where(Alias.model_id == model.id, Alias.name == alias).with_for_update()
    )
    if row is not None and row.protected and not may_move_protected:
        raise PermissionDeniedError(
            f"{model.name}:{alias} is protected: moving it needs the promoter role",
            hint="ask a promoter or an admin, or `model-registry alias unprotect` it",
        )
    return row


def _destination(
    session: Session,
    model: Model,
    row: Alias | None,
    alias: str,
    target: int | None,
    numbers: dict[int, int],
) -> int:
    """The row id of the version the alias is to point at: version `target`, or for a plain
    rollback (`target` None) the one before the current one; an expired one is refused."""
    name = model.name
    ids = {number: id_ for id_, number in numbers.items()}
    if target is None:
        if row is None:
            raise NotFoundError(f"model {name} has no alias {alias!r} to roll back")
        moves = session.scalars(
            select(AliasMove)
            .where(AliasMove.model_id == model.id, AliasMove.alias == alias)
            .order_by(AliasMove.id)
        ).all()
        stack = _alias_stack(moves)
        if len(stack) < 2:
            raise ConflictError(
                f"{name}:{alias} has no earlier version to roll back to",
                hint=f"name one: `model-registry rollback {name} {alias} --to REF`",
            )
        version_id = stack[-2]
    else:
        if target not in ids:
            raise NotFoundError(f"{name}@{target} does not exist")
        version_id = ids[target]
    chosen = session.get(Version, version_id)
    assert chosen is not None
    if chosen.expired_at is not None:
        raise expired_error(chosen)
    return version_id


def _point(
    session: Session,
    model: Model,
    row: Alias | None,
    alias: str,
    version_id: int,
    *,
    now: datetime,
    actor: str,
) -> Alias:
    """The alias row made to point at `version_id` (added when new)."""
    if row is None:
        row = Alias(
            model_id=model.id,
            name=alias,
            version_id=version_id,
            protected=False,
            updated_at=now,
            updated_by=actor,
        )
        session.add(row)
    else:
        row.version_id = version_id
        row.updated_at = now
        row.updated_by = actor
    return row


def _queue_event(
    session: Session,
    move: AliasMoveRecord,
    record: AliasRecord,
    event_id: str,
    *,
    notify: Sequence[str],
    event: Mapping[str, str] | None,
) -> None:
    """One `alias.moved` event delivery per URL in `notify`, in the move's transaction."""
    body = details_json(
        {
            **(event or {}),
            "event": "alias.moved",
            "id": event_id,
            "model": move.name,
            "alias": move.alias,
            "version": move.number,
            "digest": record.digest,
            "previous": move.previous,
            "kind": move.kind,
            "at": move.moved_at.isoformat(),
            "by": move.moved_by,
            "reason": move.reason,
        }
    )
    for url in notify:
        session.add(
            EventDelivery(
                event_id=event_id,
                url=url,
                payload=body,
                created_at=move.moved_at,
                attempts=0,
                last_error="",
            )
        )
