"""Tags: a version's mutable labels, added and removed with their audit entry in one transaction,
listed for a version, and the versions that carry a tag found through its index.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from registry.catalog.audit import append_audit
from registry.catalog.models import Model, Tag, Version, utcnow
from registry.catalog.parts import CatalogPart, details_json, expired_error, version_record
from registry.errors import NotFoundError
from registry.records import TagRecord, VersionRecord


class TagsPart(CatalogPart):
    """Adding, removing and listing tags."""

    def add_tag(self, name: str, number: int, tag: str, *, actor: str) -> tuple[TagRecord, bool]:
        """Tag version `number` of model `name`, with a `tag-add` audit entry in the same
        transaction; (the tag, whether it is new). Adding a tag the version has changes
        nothing and writes no entry. An expired version is refused."""

        def work(session: Session) -> tuple[TagRecord, bool]:
            version = _version(session, name, number)
            if version.expired_at is not None:
                raise expired_error(version)
            row = session.get(Tag, (version.id, tag))
            if row is not None:
                return _record(name, number, row), False
            now = utcnow()
            row = Tag(version_id=version.id, tag=tag, added_at=now, added_by=actor)
            session.add(row)
            append_audit(
                session,
                at=now,
                actor=actor,
                action="tag-add",
                subject=name,
                details=details_json({"version": number, "tag": tag}),
            )
            return _record(name, number, row), True

        return self._retrying(work, what=f"tag {name}@{number}")

    def remove_tag(self, name: str, number: int, tag: str, *, actor: str) -> TagRecord:
        """Remove `tag` from version `number` of model `name`, with a `tag-rm` audit entry in
        the same transaction; NotFoundError when the version does not have it."""

        def work(session: Session) -> TagRecord:
            version = _version(session, name, number)
            row = session.get(Tag, (version.id, tag))
            if row is None:
                raise NotFoundError(
                    f"{name}@{number} has no tag {tag!r}",
                    hint=f"`model-registry tag ls {name}@{number}` lists its tags",
                )
            record = _record(name, number, row)
            session.delete(row)
            append_audit(
                session,
                at=utcnow(),
                actor=actor,
                action="tag-rm",
                subject=name,
                details=details_json({"version": number, "tag": tag}),
            )
            return record

        return self._retrying(work, what=f"untag {name}@{number}")

    def version_tags(self, name: str, number: int) -> list[TagRecord]:
        """The tags of version `number` of model `name`, by tag (none for an unknown version:
        the caller resolved it)."""
        with self._read() as session:
            rows = session.execute(
                select(Tag)
                .join(Version, Version.id == Tag.version_id)
                .join(Model, Model.id == Version.model_id)
                .where(Model.name == name, Version.number == number)
                .order_by(Tag.tag)
            ).scalars()
            return [_record(name, number, row) for row in rows]

    def tagged(
        self, tag: str, *, name: str | None = None, expired: bool = False
    ) -> list[VersionRecord]:
        """The versions tagged `tag` (of model `name` only, when given), by model and number;
        live ones only unless `expired`. Found through the tag's index, whatever the size of
        the catalog."""
        with self._read() as session:
            query = (
                select(Version)
                .join(Tag, Tag.version_id == Version.id)
                .join(Model, Model.id == Version.model_id)
                .where(Tag.tag == tag)
                .options(selectinload(Version.files), selectinload(Version.model))
                .order_by(Model.name, Version.number)
            )
            if name is not None:
                if session.scalar(select(Model.id).where(Model.name == name)) is None:
                    raise NotFoundError(f"model {name} does not exist")
                query = query.where(Model.name == name)
            if not expired:
                query = query.where(Version.expired_at.is_(None))
            return [version_record(v) for v in session.scalars(query).all()]


def _version(session: Session, name: str, number: int) -> Version:
    """The version row (its model loaded for the messages). Every write holds the catalog's
    one write lock already (`Catalog._retrying`): no row lock is needed."""
    version = session.scalar(
        select(Version)
        .join(Model, Model.id == Version.model_id)
        .where(Model.name == name, Version.number == number)
        .options(selectinload(Version.model))
    )
    if version is None:
        raise NotFoundError(f"{name}@{number} does not exist")
    return version


def _record(name: str, number: int, row: Tag) -> TagRecord:
    return TagRecord(name, number, row.tag, row.added_at, row.added_by)
