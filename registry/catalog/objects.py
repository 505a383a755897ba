"""Stored objects found by their store name: what an object URL (`/v1/objects/{id}`) names, the
blob or manifest behind it, and the live versions that reference it (whose models decide who may
read it). Both lookups go through an index (`ix_blobs_object_name`,
`ix_versions_manifest_object`), never a scan.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from registry.catalog.models import Blob, Model, Version, VersionFile
from registry.catalog.parts import CatalogPart


@dataclass(frozen=True)
class StoredObject:
    """A blob or a manifest of the stores, as the catalog knows it."""

    kind: str  # "blob" or "manifest"
    digest: str
    sealed_size: int | None  # a blob's, from its row; a manifest's is in its sealed header
    # (model, number) of each live version that references it, by model then number.
    versions: tuple[tuple[str, int], ...]


class ObjectsPart(CatalogPart):
    """Objects found by store name."""

    def stored_object(self, blob_name: str, manifest_name: str) -> StoredObject | None:
        """The blob stored as `blob_name`, else the manifest stored as `manifest_name`, with
        the live versions referencing it; None when neither is stored (a swept blob is not)."""
        with self._read() as session:
            blob = session.execute(
                select(Blob).where(Blob.object_name == blob_name, Blob.swept_at.is_(None))
            ).scalar_one_or_none()
            if blob is not None:
                rows = session.execute(
                    select(Model.name, Version.number)
                    .join(Version, Version.model_id == Model.id)
                    .join(VersionFile, VersionFile.version_id == Version.id)
                    .where(VersionFile.digest == blob.digest, Version.expired_at.is_(None))
                    .distinct()
                    .order_by(Model.name, Version.number)
                ).all()
                versions = tuple((name, number) for name, number in rows)
                return StoredObject("blob", blob.digest, blob.sealed_size, versions)
            manifests = session.execute(
                select(Model.name, Version.number, Version.digest)
                .join(Version, Version.model_id == Model.id)
                .where(Version.manifest_object == manifest_name, Version.expired_at.is_(None))
                .order_by(Model.name, Version.number)
            ).all()
            if not manifests:
                return None
            versions = tuple((name, number) for name, number, _digest in manifests)
            return StoredObject("manifest", manifests[0][2], None, versions)
