"""What every part of `Catalog` shares: the `CatalogPart` base its per-table-group classes derive
from (the transactions they run in are `Catalog`'s, in `registry.catalog.repository`), and the row
lookups and row-to-record conversions more than one part uses.

Results are plain frozen records (`registry.records`), never live ORM objects, so no caller can
lazily touch the database outside a transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from registry.catalog import lite
from registry.catalog.models import Model, Version, VersionFile
from registry.errors import NotFoundError
from registry.records import FileRecord, VersionRecord

T = TypeVar("T")


class CatalogPart:
    """The base of every part of `Catalog`: a read transaction, a write transaction retried on
    a race, and a write of transient rows outside the catalog's one write lock and journal (all
    supplied by `Catalog`)."""

    def _read(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _retrying(self, work: Callable[[Session], T], *, what: str) -> T:
        raise NotImplementedError

    def _transient(self, work: Callable[[Session], T], *, what: str) -> T:
        raise NotImplementedError


def version_record(
    version: Version, *, model: str | None = None, files: Iterable[VersionFile] | None = None
) -> VersionRecord:
    """The record of a version row (its model's name and its files as given, when they were
    queried apart)."""
    return VersionRecord(
        name=model if model is not None else version.model.name,
        number=version.number,
        digest=version.digest,
        manifest_object=version.manifest_object,
        message=version.message,
        created_at=version.created_at,
        created_by=version.created_by,
        signed_by=version.signed_by,
        file_count=version.file_count,
        total_size=version.total_size,
        tensor_count=version.tensor_count,
        parameter_count=version.parameter_count,
        dtypes=tuple(filter(None, version.dtypes.split(","))),
        files=tuple(
            FileRecord(f.path, f.size, f.digest, f.tensor_count)
            for f in (version.files if files is None else files)
        ),
        expired_at=version.expired_at,
        expired_by=version.expired_by,
        expiry_reason=version.expiry_reason,
    )


def expired_error(version: Version) -> NotFoundError:
    assert version.expired_at is not None
    return lite.expired_error(
        version.model.name,
        version.number,
        version.expired_at,
        version.expired_by,
        version.expiry_reason,
    )


def details_json(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"))


def version_row(session: Session, record: VersionRecord) -> Version:
    version = session.scalar(
        select(Version)
        .join(Model)
        .where(Model.name == record.name, Version.number == record.number)
        .options(selectinload(Version.model))
    )
    if version is None:
        raise NotFoundError(f"{record.ref} does not exist")
    return version


def version_numbers(session: Session, model_id: int) -> dict[int, int]:
    """Version row id -> version number, for one model."""
    rows = session.execute(
        select(Version.id, Version.number).where(Version.model_id == model_id)
    ).all()
    return {version_id: number for version_id, number in rows}
