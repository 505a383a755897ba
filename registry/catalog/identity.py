"""What the catalog keeps outside its journaled tables about the registry: the registry it belongs
to, and its cache of signed manifest envelopes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.catalog.models import CachedManifest, CatalogIdentity
from registry.catalog.parts import CatalogPart


class IdentityPart(CatalogPart):
    """The registry id and the manifest cache."""

    def registry_id(self) -> str | None:
        """The registry this catalog belongs to (None: a catalog that never recorded one)."""
        with self._read() as session:
            return session.scalar(select(CatalogIdentity.registry_id))

    def cached_manifest(self, digest: str) -> bytes | None:
        """A version's signed manifest envelope, if cached (the caller checks it)."""
        with self._read() as session:
            return session.scalar(
                select(CachedManifest.envelope).where(CachedManifest.digest == digest)
            )

    def cache_manifest(self, digest: str, envelope: bytes) -> None:
        def work(session: Session) -> None:
            if session.get(CachedManifest, digest) is None:
                session.add(CachedManifest(digest=digest, envelope=envelope))

        self._retrying(work, what="caching a manifest")
