"""Reading the catalog a page at a time, for the web UI and the REST API's lists: models with
what a listing shows of each, a model's versions newest first with their aliases, holds and
copies per region (or oldest first after a number), and the audit trail filtered and paged by
id. Every query is bounded by the page it serves, so a page costs the same with a thousand
models or a hundred thousand versions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from registry.catalog.models import (
    Alias,
    AliasMove,
    AuditEvent,
    Blob,
    LegalHold,
    Model,
    Placement,
    Version,
    VersionFile,
)
from registry.catalog.parts import CatalogPart, version_record
from registry.errors import NotFoundError
from registry.records import (
    PLACEMENT_STATES,
    AliasMoveRecord,
    AuditRecord,
    HoldRecord,
    ModelSummary,
    RegionCopies,
    VersionRecord,
    VersionState,
)


class BrowsePart(CatalogPart):
    """Paged reads for the web UI."""

    def model_names(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Every model's name, sorted (with `after`, those after it; at most `limit`): what a
        listing filters (by name and by a token's patterns) before it asks for the page it
        shows."""
        query = select(Model.name).order_by(Model.name).limit(limit)
        if after is not None:
            query = query.where(Model.name > after)
        with self._read() as session:
            return list(session.scalars(query))

    def model_summaries(self, names: Sequence[str]) -> list[ModelSummary]:
        """The summaries of `names` (unknown names are left out), in the order given."""
        with self._read() as session:
            models = {
                m.name: m for m in session.scalars(select(Model).where(Model.name.in_(names)))
            }
            ids = [m.id for m in models.values()]
            if not ids:
                return []
            counts = _live_counts(session, ids)
            latest_at = _created(session, [(m, n) for m, (_c, n, _s) in counts.items() if n])
            changed = _changes(session, ids)
            aliases = _aliases(session, ids)
            stored = self._stored_sizes(session, ids, counts, changed)
        summaries = []
        for name in names:
            model = models.get(name)
            if model is None:
                continue
            count, latest, size = counts.get(model.id, (0, None, 0))
            summaries.append(
                ModelSummary(
                    name,
                    model.created_at,
                    count,
                    latest,
                    latest_at.get(model.id),
                    tuple(aliases.get(model.id, ())),
                    stored.get(model.id, 0),
                    max([model.created_at, *changed.get(model.id, ())]),
                    size,
                )
            )
        return summaries

    def _stored_sizes(
        self,
        session: Session,
        ids: Sequence[int],
        counts: dict[int, tuple[int, int | None, int]],
        changed: dict[int, list[datetime]],
    ) -> dict[int, int]:
        """The stored size of each model, remembered by this catalog handle: reading every
        file of a page of models is most of a listing's time, and the size changes only with
        a push or an expiry, each of which changes the key (the live count, the newest number,
        the newest change)."""
        cache: dict[tuple[object, ...], int] = self.__dict__.setdefault("_stored_cache", {})
        keys = {
            model_id: (
                model_id,
                *counts.get(model_id, (0, None, 0)),
                max(changed.get(model_id, ()), default=None),
            )
            for model_id in ids
        }
        sizes = {model_id: cache.get(key) for model_id, key in keys.items()}
        missing = [model_id for model_id, size in sizes.items() if size is None]
        if missing:
            found = _stored(session, missing)
            if len(cache) > 100_000:
                cache.clear()  # a bound, not a policy: a listing refills what it shows
            for model_id in missing:
                sizes[model_id] = cache[keys[model_id]] = found.get(model_id, 0)
        return {model_id: size or 0 for model_id, size in sizes.items()}

    def version_page(
        self, name: str, *, offset: int, limit: int, expired: bool = False
    ) -> tuple[list[VersionRecord], int]:
        """A page of the model's versions, newest first (with `expired`, the tombstones too),
        and how many there are in all."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            where = Version.model_id == model.id
            if not expired:
                where = where & Version.expired_at.is_(None)
            total = session.scalar(select(func.count()).select_from(Version).where(where)) or 0
            rows = session.scalars(
                select(Version)
                .where(where)
                .options(selectinload(Version.files))
                .order_by(Version.number.desc())
                .offset(offset)
                .limit(limit)
            ).all()
            return [version_record(v, model=name) for v in rows], int(total)

    def versions_after(
        self, name: str, *, after: int, limit: int, expired: bool = False
    ) -> list[VersionRecord]:
        """At most `limit` of the model's versions numbered after `after`, oldest first (with
        `expired`, the tombstones too): a page of the REST API's list, found by the
        (model, number) index whatever page it is."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            where = (Version.model_id == model.id) & (Version.number > after)
            if not expired:
                where = where & Version.expired_at.is_(None)
            rows = session.scalars(
                select(Version)
                .where(where)
                .options(selectinload(Version.files))
                .order_by(Version.number)
                .limit(limit)
            ).all()
            return [version_record(v, model=name) for v in rows]

    def version_states(
        self, name: str, numbers: Sequence[int], *, regions: Sequence[str]
    ) -> dict[int, VersionState]:
        """For each of the model's versions `numbers`: the aliases at it, its hold, and how
        many of its objects each of `regions` holds in each placement state."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            rows = {
                version_id: (number, digest)
                for version_id, number, digest in session.execute(
                    select(Version.id, Version.number, Version.digest).where(
                        Version.model_id == model.id, Version.number.in_(numbers)
                    )
                )
            }
            ids = list(rows)
            aliases: dict[int, list[str]] = {}
            for alias, version_id in session.execute(
                select(Alias.name, Alias.version_id)
                .where(Alias.model_id == model.id, Alias.version_id.in_(ids))
                .order_by(Alias.name)
            ):
                aliases.setdefault(version_id, []).append(alias)
            holds = {
                hold.version_id: hold
                for hold in session.scalars(select(LegalHold).where(LegalHold.version_id.in_(ids)))
            }
            objects: dict[int, int] = {version_id: 1 for version_id in ids}  # the manifest
            for version_id, count in session.execute(
                select(VersionFile.version_id, func.count(func.distinct(VersionFile.digest)))
                .where(VersionFile.version_id.in_(ids))
                .group_by(VersionFile.version_id)
            ):
                objects[version_id] += int(count)
            states: dict[tuple[int, str], dict[str, int]] = {}
            # Distinct digests: two files of one content are one object (and one placement),
            # which a plain count would count twice.
            blob_copies = (
                select(
                    VersionFile.version_id,
                    Placement.region,
                    Placement.state,
                    func.count(func.distinct(VersionFile.digest)),
                )
                .join(
                    Placement,
                    and_(Placement.digest == VersionFile.digest, Placement.purpose == "blob"),
                )
                .where(VersionFile.version_id.in_(ids))
                .group_by(VersionFile.version_id, Placement.region, Placement.state)
            )
            manifest_copies = (
                select(Version.id, Placement.region, Placement.state, func.count())
                .join(
                    Placement,
                    and_(Placement.digest == Version.digest, Placement.purpose == "manifest"),
                )
                .where(Version.id.in_(ids))
                .group_by(Version.id, Placement.region, Placement.state)
            )
            for query in (blob_copies, manifest_copies):
                for version_id, region, state, count in session.execute(query):
                    tally = states.setdefault((version_id, region), {})
                    tally[state] = tally.get(state, 0) + int(count)
        found = {}
        for version_id, (number, digest) in rows.items():
            hold = holds.get(version_id)
            copies = []
            for region in regions:
                tally = states.get((version_id, region), {})
                counted = {
                    state: min(tally.get(state, 0), objects[version_id])
                    for state in PLACEMENT_STATES
                }
                missing = max(objects[version_id] - sum(counted.values()), 0)
                copies.append(
                    RegionCopies(
                        region, counted["verified"], counted["pending"], counted["bad"], missing
                    )
                )
            found[number] = VersionState(
                number,
                tuple(aliases.get(version_id, ())),
                None
                if hold is None
                else HoldRecord(name, number, digest, hold.reason, hold.placed_by, hold.placed_at),
                tuple(copies),
            )
        return found

    def alias_timeline(self, name: str, *, limit: int) -> list[AliasMoveRecord]:
        """The newest `limit` moves of the model's aliases, newest first."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            after, before = aliased(Version), aliased(Version)
            rows = session.execute(
                select(AliasMove, after.number, before.number)
                .join(after, after.id == AliasMove.version_id)
                .outerjoin(before, before.id == AliasMove.previous_version_id)
                .where(AliasMove.model_id == model.id)
                .order_by(AliasMove.id.desc())
                .limit(limit)
            ).all()
        return [
            AliasMoveRecord(
                name,
                move.alias,
                move.kind,
                number,
                previous,
                move.moved_at,
                move.moved_by,
                move.reason,
            )
            for move, number, previous in rows
        ]

    def audit_page(
        self,
        *,
        subjects: Sequence[str] | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        version: int | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AuditRecord]:
        """Audit entries newest first, at most `limit`, with ids below `before` (the page after
        the one that ended there): about one of `subjects`, by `actor`, of `action`, within
        [`since`, `until`), and (with `version`) about that version of the subject."""
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if subjects is not None:
            query = query.where(AuditEvent.subject.in_(subjects))
        if actor is not None:
            query = query.where(AuditEvent.actor == actor)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if until is not None:
            query = query.where(AuditEvent.at < until)
        if before is not None:
            query = query.where(AuditEvent.id < before)
        if version is not None:
            # Details are canonical JSON (sorted keys, no spaces): the version's number is
            # followed by a comma or the closing brace. Checked again on the parsed details.
            query = query.where(
                or_(
                    AuditEvent.details.contains(f'"version":{version},'),
                    AuditEvent.details.contains(f'"version":{version}}}'),
                )
            )
        with self._read() as session:
            events = [
                AuditRecord(e.id, e.at, e.actor, e.action, e.subject, json.loads(e.details))
                for e in session.scalars(query)
            ]
        if version is not None:
            events = [e for e in events if e.details.get("version") == version]
        return events


def _live_counts(session: Session, ids: Sequence[int]) -> dict[int, tuple[int, int | None, int]]:
    """model id -> (live versions, newest live number, their sizes summed)."""
    return {
        model_id: (int(count), latest, int(size or 0))
        for model_id, count, latest, size in session.execute(
            select(
                Version.model_id,
                func.count(),
                func.max(Version.number),
                func.sum(Version.total_size),
            )
            .where(Version.model_id.in_(ids), Version.expired_at.is_(None))
            .group_by(Version.model_id)
        )
    }


# (model, number) pairs per query of `_created`: SQLite parses an OR of n terms n deep, and
# refuses an expression deeper than 1,000.
PAIRS_PER_QUERY = 250


def _created(session: Session, versions: Sequence[tuple[int, int | None]]) -> dict[int, datetime]:
    """model id -> when the given (model id, number) version was pushed."""
    found: dict[int, datetime] = {}
    for start in range(0, len(versions), PAIRS_PER_QUERY):
        pairs = versions[start : start + PAIRS_PER_QUERY]
        # OR of (model, number) pairs, not a row-value IN: SQLite plans the latter as a scan of
        # every version, the former as one lookup of the (model, number) index per pair.
        rows = session.execute(
            select(Version.model_id, Version.created_at).where(
                or_(*(and_(Version.model_id == m, Version.number == n) for m, n in pairs))
            )
        )
        found.update((model_id, at) for model_id, at in rows)
    return found


def _changes(session: Session, ids: Sequence[int]) -> dict[int, list[datetime]]:
    """model id -> the newest moment of each kind of change: a push, an expiry, an alias
    move, a hold placed."""
    found: dict[int, list[datetime]] = {}
    queries = (
        select(Version.model_id, func.max(Version.created_at), func.max(Version.expired_at))
        .where(Version.model_id.in_(ids))
        .group_by(Version.model_id),
        select(Alias.model_id, func.max(Alias.updated_at))
        .where(Alias.model_id.in_(ids))
        .group_by(Alias.model_id),
        select(Version.model_id, func.max(LegalHold.placed_at))
        .join(LegalHold, LegalHold.version_id == Version.id)
        .where(Version.model_id.in_(ids))
        .group_by(Version.model_id),
    )
    for query in queries:
        for model_id, *moments in session.execute(query):
            found.setdefault(model_id, []).extend(m for m in moments if m is not None)
    return found


def _aliases(session: Session, ids: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
    """model id -> its aliases and the version number each points at, by alias."""
    target = aliased(Version)
    found: dict[int, list[tuple[str, int]]] = {}
    for model_id, alias, number in session.execute(
        select(Alias.model_id, Alias.name, target.number)
        .join(target, target.id == Alias.version_id)
        .where(Alias.model_id.in_(ids))
        .order_by(Alias.model_id, Alias.name)
    ):
        found.setdefault(model_id, []).append((alias, number))
    return found


def _stored(session: Session, ids: Sequence[int]) -> dict[int, int]:
    """model id -> the bytes of its live versions' distinct files (shared content once)."""
    distinct = (
        select(Version.model_id.label("model_id"), VersionFile.digest.label("digest"))
        .join(VersionFile, VersionFile.version_id == Version.id)
        .where(Version.model_id.in_(ids), Version.expired_at.is_(None))
        .distinct()
        .subquery()
    )
    return {
        model_id: int(size)
        for model_id, size in session.execute(
            select(distinct.c.model_id, func.coalesce(func.sum(Blob.size), 0))
            .join(Blob, Blob.digest == distinct.c.digest)
            .group_by(distinct.c.model_id)
        )
    }
