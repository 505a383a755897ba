"""Keys: the signing key, each region's key-encryption key, key rotation, and the key broker's
data keys."""

from __future__ import annotations

import base64

from registry import reports
from registry.wire.base import Wire

# -- keys ----------------------------------------------------------------------------------------


class PreviousKey(Wire, kw_only=True, omit_defaults=True):
    """A key a rotation is moving away from: a key `file` or a KMS `key`, with its kek id
    (null: a previous key file that is gone)."""

    kek_id: str | None
    file: str | None = None
    key: str | None = None


class RegionKey(Wire, kw_only=True):
    """A region's key-encryption key: the local key `file`, or a KMS `key` in `region`."""

    name: str
    provider: str
    kek_id: str
    file: str | None
    key: str | None
    region: str | None
    endpoint: str | None
    previous: list[PreviousKey]

    @classmethod
    def of(cls, k: reports.RegionKey) -> RegionKey:
        local = k.provider == "local"
        return cls(
            name=k.region,
            provider=k.provider,
            kek_id=k.kek_id,
            file=k.key if local else None,
            key=None if local else k.key,
            region=k.kms_region,
            endpoint=k.endpoint,
            previous=[
                PreviousKey(kek_id=kek, file=key) if local else PreviousKey(kek_id=kek, key=key)
                for key, kek in k.previous
            ],
        )


class TrustedSigner(Wire, kw_only=True):
    name: str
    key_id: str
    public_key: str


class Untrusted(Wire, kw_only=True):
    """A signer no longer trusted (`keys untrust`)."""

    name: str


class SigningKey(Wire, kw_only=True):
    """The new signing key of `keys new-signing-key`: its public key, to trust elsewhere."""

    public_key: str


class OpenSSFKey(Wire, kw_only=True):
    """The public key of the registry's OpenSSF signer (`keys export --openssf`)."""

    pem: str
    fingerprint: str  # SHA-256 of the DER SubjectPublicKeyInfo, hex

    @classmethod
    def of(cls, key: reports.OpenSSFKey) -> OpenSSFKey:
        return cls(pem=key.pem.decode(), fingerprint=key.fingerprint)

    def to_report(self) -> reports.OpenSSFKey:
        return reports.OpenSSFKey(self.pem.encode(), self.fingerprint)


class Keys(Wire, kw_only=True):
    """The signing key, each region's key-encryption key and the trusted signers."""

    signing_public_key: str
    signing_key_id: str
    kek_id: str
    kek_file: str | None
    regions: list[RegionKey]
    trusted_signers: list[TrustedSigner]

    @classmethod
    def of(cls, report: reports.KeysReport) -> Keys:
        return cls(
            signing_public_key=report.signing_public_key,
            signing_key_id=report.signing_key_id,
            kek_id=report.kek_id,
            kek_file=report.kek_file,
            regions=[RegionKey.of(k) for k in report.regions],
            trusted_signers=[
                TrustedSigner(name=s.name, key_id=s.key_id, public_key=s.public_key)
                for s in report.trusted_signers
            ],
        )


class RotationReport(Wire, kw_only=True):
    to: str
    retired: list[str]
    still_used: list[str]
    unrecoverable: int
    regions: list[str]
    objects: int
    slots_written: int
    catalog_slots_retired: int
    old_slot_objects_deleted: int
    old_slot_objects_locked: int
    created_key_file: str | None
    seconds: float

    @classmethod
    def of(cls, r: reports.RotationReport) -> RotationReport:
        return cls(
            to=r.to,
            retired=list(r.retired),
            still_used=list(r.still_used),
            unrecoverable=r.unrecoverable,
            regions=list(r.regions),
            objects=r.objects,
            slots_written=r.slots_written,
            catalog_slots_retired=r.catalog_slots_retired,
            old_slot_objects_deleted=r.old_slot_objects_deleted,
            old_slot_objects_locked=r.old_slot_objects_locked,
            created_key_file=r.created_key_file,
            seconds=round(r.seconds, 3),
        )


class DataKey(Wire, kw_only=True):
    purpose: str  # "blob" or "manifest"
    digest: str
    key: str  # base64
    # Where GET /v1/objects/{object} serves the object's sealed bytes (object_size of them):
    # the URL caches share. Absent from servers older than object URLs.
    object: str | None = None
    object_size: int | None = None


class DataKeys(Wire, kw_only=True):
    """The key broker's answer: the data keys of a version's manifest and files."""

    ref: str
    digest: str
    keys: list[DataKey]

    @classmethod
    def of(cls, brokered: reports.BrokeredKeys) -> DataKeys:
        return cls(
            ref=brokered.version.ref,
            digest=brokered.version.digest,
            keys=[
                DataKey(
                    purpose=kind,
                    digest=digest,
                    key=base64.b64encode(key).decode(),
                    object=brokered.objects.get((kind, digest), (None, None))[0],
                    object_size=brokered.objects.get((kind, digest), (None, None))[1],
                )
                for (kind, digest), key in sorted(brokered.keys.items())
            ],
        )

    def to_keys(self) -> dict[tuple[str, str], bytes]:
        return {(k.purpose, k.digest): base64.b64decode(k.key) for k in self.keys}

    def to_objects(self) -> dict[tuple[str, str], tuple[str, int]]:
        """(purpose, digest) -> (object id, sealed size), for the keys that name them."""
        return {
            (k.purpose, k.digest): (k.object, k.object_size)
            for k in self.keys
            if k.object is not None and k.object_size is not None
        }
