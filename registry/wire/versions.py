"""Versions and models: what `ls`, `show`, `push`, `pull`, `verify` and `init` print, and what the
API answers about them."""

from __future__ import annotations

from typing import Any

import msgspec

from registry import manifest as manifests
from registry import prepared, records, reports
from registry.wire.base import Time, Wire, iso, maybe_iso, maybe_parse_time, parse_time

# -- versions and models ---------------------------------------------------------------------------


class File(Wire, kw_only=True):
    """One file of a version."""

    path: str
    size: int
    digest: str
    tensors: int

    @classmethod
    def of(cls, record: records.FileRecord) -> File:
        return cls(
            path=record.path, size=record.size, digest=record.digest, tensors=record.tensor_count
        )

    def to_record(self) -> records.FileRecord:
        return records.FileRecord(self.path, self.size, self.digest, self.tensors)


class Version(Wire, kw_only=True):
    """A version of a model (expired or deleted versions are tombstones: `expired_at` set)."""

    ref: str
    name: str
    number: int
    digest: str
    message: str
    created_at: Time
    created_by: str
    signed_by: str  # the id of the key that signed its manifest
    file_count: int
    files: list[File]
    size: int
    tensors: int
    parameters: int
    dtypes: list[str]
    expired_at: Time | None = None
    expired_by: str | None = None
    expiry_reason: str | None = None

    @staticmethod
    def fields_of(v: records.VersionRecord) -> dict[str, Any]:
        """The fields of a version, for the models that extend it."""
        return {
            "ref": v.ref,
            "name": v.name,
            "number": v.number,
            "digest": v.digest,
            "message": v.message,
            "created_at": iso(v.created_at),
            "created_by": v.created_by,
            "signed_by": v.signed_by,
            "file_count": v.file_count,
            "files": [File.of(f) for f in v.files],
            "size": v.total_size,
            "tensors": v.tensor_count,
            "parameters": v.parameter_count,
            "dtypes": list(v.dtypes),
            "expired_at": maybe_iso(v.expired_at),
            "expired_by": v.expired_by,
            "expiry_reason": v.expiry_reason,
        }

    @classmethod
    def of(cls, record: records.VersionRecord) -> Version:
        return cls(**cls.fields_of(record))

    def to_record(self) -> records.VersionRecord:
        return records.VersionRecord(
            name=self.name,
            number=self.number,
            digest=self.digest,
            manifest_object="",  # the server's own business
            message=self.message,
            created_at=parse_time(self.created_at),
            created_by=self.created_by,
            signed_by=self.signed_by,
            file_count=self.file_count,
            total_size=self.size,
            tensor_count=self.tensors,
            parameter_count=self.parameters,
            dtypes=tuple(self.dtypes),
            files=tuple(f.to_record() for f in self.files),
            expired_at=maybe_parse_time(self.expired_at),
            expired_by=self.expired_by,
            expiry_reason=self.expiry_reason,
        )


class VersionDetails(Version, kw_only=True):
    """A version with its manifest (signature and digest checked), its trusted signer and its
    tags."""

    signer: str  # the trusted signer's name
    manifest: dict[str, Any]  # the canonical manifest (docs/format.md)
    tags: list[str] = msgspec.field(default_factory=list)  # its tags now (not in the manifest)

    @classmethod
    def of(cls, details: reports.VersionDetails) -> VersionDetails:  # type: ignore[override]
        return cls(
            **Version.fields_of(details.version),
            signer=details.signer,
            manifest=details.manifest.to_dict(),
            tags=list(details.tags),
        )

    def to_report(self) -> reports.VersionDetails:
        """The details, the manifest checked against the version's digest."""
        version = self.to_record()
        manifest = manifests.manifest_from_dict(
            self.manifest, expected_digest=version.digest, what=f"manifest of {version.ref}"
        )
        return reports.VersionDetails(version, manifest, self.signer, tuple(self.tags))


class Model(Wire, kw_only=True):
    name: str
    versions: int
    latest: int | None
    size: int
    # The bytes of the distinct files of its live versions (shared content counted once).
    stored_size: int
    created_at: Time

    @classmethod
    def of(cls, record: records.ModelRecord) -> Model:
        return cls(
            name=record.name,
            versions=record.version_count,
            latest=record.latest,
            size=record.total_size,
            stored_size=record.stored_size,
            created_at=iso(record.created_at),
        )

    def to_record(self) -> records.ModelRecord:
        return records.ModelRecord(
            self.name,
            parse_time(self.created_at),
            self.versions,
            self.latest,
            self.size,
            self.stored_size,
        )


class ModelList(Wire, kw_only=True):
    """A page of the models a token may read, by name: `next` is the `after` that asks for the
    page that follows (null on the last page)."""

    models: list[Model]
    next: str | None = None

    @classmethod
    def of(cls, listing: reports.ModelList) -> ModelList:
        return cls(models=[Model.of(m) for m in listing.models], next=listing.next)

    def to_report(self) -> reports.ModelList:
        return reports.ModelList(tuple(m.to_record() for m in self.models), self.next)


class VersionList(Wire, kw_only=True):
    """A page of a model's versions, oldest first: `next` is the `after` (a version number)
    that asks for the page that follows (null on the last page)."""

    versions: list[Version]
    next: int | None = None

    @classmethod
    def of(cls, listing: reports.VersionList) -> VersionList:
        return cls(versions=[Version.of(v) for v in listing.versions], next=listing.next)

    def to_report(self) -> reports.VersionList:
        return reports.VersionList(tuple(v.to_record() for v in self.versions), self.next)


class PushResult(Version, kw_only=True):
    """A push: the version (new, or the existing one with identical content)."""

    created: bool
    uploaded_bytes: int
    reused_bytes: int
    pending_regions: list[str]

    @classmethod
    def of(cls, result: reports.PushResult) -> PushResult:  # type: ignore[override]
        return cls(
            **Version.fields_of(result.version),
            created=result.created,
            uploaded_bytes=result.uploaded_bytes,
            reused_bytes=result.reused_bytes,
            pending_regions=list(result.pending_regions),
        )

    def to_report(self) -> reports.PushResult:
        version = self.to_record()
        return reports.PushResult(
            version,
            self.created,
            self.uploaded_bytes,
            self.reused_bytes,
            version.file_count,
            tuple(self.pending_regions),
        )


class PullResult(Version, kw_only=True):
    """A pull: the version, where it was written, the files it wrote and those already right
    there, and the copies read around."""

    destination: str
    written: list[str]
    unchanged: list[str]
    bytes: int
    bad_copies: list[str]

    @classmethod
    def of(cls, result: reports.PullResult) -> PullResult:  # type: ignore[override]
        return cls(
            **Version.fields_of(result.version),
            destination=str(result.destination),
            written=list(result.files),
            unchanged=list(result.unchanged),
            bytes=result.bytes,
            bad_copies=list(result.bad_copies),
        )


class StreamedFile(Wire, kw_only=True):
    path: str
    size: int
    digest: str


class PrepareResult(Version, kw_only=True):
    """A prepare: the version pinned, the folder, what was written, left or removed there, and
    the weight files the pin leaves to the loader."""

    destination: str
    pin: str  # the registry.json written
    requested: str
    written: list[str]
    unchanged: list[str]
    removed: list[str]
    bytes: int
    streamed: list[StreamedFile]
    withheld: list[str]

    @classmethod
    def of(cls, result: prepared.PrepareResult) -> PrepareResult:  # type: ignore[override]
        return cls(
            **Version.fields_of(result.version),
            destination=str(result.destination),
            pin=str(result.destination / prepared.PIN_NAME),
            requested=result.pin.requested,
            written=list(result.written),
            unchanged=list(result.unchanged),
            removed=list(result.removed),
            bytes=result.bytes,
            withheld=list(result.pin.withheld),
            streamed=[
                StreamedFile(path=f.path, size=f.size, digest=f.digest) for f in result.pin.streamed
            ],
        )


class FileProblem(Wire, kw_only=True):
    path: str
    problem: str


class VerifyReport(Wire, kw_only=True):
    """A version's check: problems per file, and the regions that could not be checked."""

    version: Version
    ok: bool
    read_data: bool
    checked_files: int
    checked_bytes: int
    problems: list[FileProblem]
    unchecked: list[str]

    @classmethod
    def of(cls, report: reports.VerifyReport) -> VerifyReport:
        return cls(
            version=Version.of(report.version),
            ok=report.ok,
            read_data=report.read_data,
            checked_files=report.checked_files,
            checked_bytes=report.checked_bytes,
            problems=[FileProblem(path=p.path, problem=p.problem) for p in report.problems],
            unchecked=list(report.unchecked),
        )

    def to_report(self) -> reports.VerifyReport:
        return reports.VerifyReport(
            self.version.to_record(),
            self.read_data,
            self.checked_files,
            self.checked_bytes,
            tuple(reports.FileProblem(p.path, p.problem) for p in self.problems),
            tuple(self.unchecked),
        )


class InitResult(Wire, kw_only=True):
    home: str
    created: bool
    registry_id: str
    catalog_url: str
    store: str
    keys: str
    public_key: str

    @classmethod
    def of(cls, result: reports.InitResult) -> InitResult:
        return cls(
            home=str(result.home),
            created=result.created,
            registry_id=result.registry_id,
            catalog_url=result.catalog_url,
            store=result.store,
            keys=result.keys,
            public_key=result.public_key,
        )


# -- diff and model card ---------------------------------------------------------------------------


class TensorChange(Wire, kw_only=True):
    """A tensor in both versions whose dtype or shape differs: [in a, in b] each."""

    name: str
    dtype: list[str]
    shape: list[list[int]]


class ValueChange(Wire, kw_only=True):
    """A config.json key (nested keys joined with dots) or a metadata key whose value differs:
    its value in a and in b (null: absent)."""

    key: str
    a: Any = None
    b: Any = None


class VersionDiff(Wire, kw_only=True):
    """What changed from version `a` to version `b`: files `b` reuses (content `a` holds) and
    the bytes it adds, files added, changed and removed, tensors added, removed and changed,
    config.json keys changed (`config_compared` false: not compared, as the REST API answers,
    whose client compares them itself) and metadata keys changed."""

    a: Version
    b: Version
    reused: list[str]
    reused_bytes: int
    new_bytes: int
    added_files: list[str]
    changed_files: list[str]
    removed_files: list[str]
    tensors_added: list[str]
    tensors_removed: list[str]
    tensors_changed: list[TensorChange]
    tensors_same: int
    config_compared: bool
    config_changes: list[ValueChange]
    meta_changes: list[ValueChange]

    @classmethod
    def of(cls, diff: reports.VersionDiff) -> VersionDiff:
        return cls(
            a=Version.of(diff.a),
            b=Version.of(diff.b),
            reused=list(diff.reused),
            reused_bytes=diff.reused_bytes,
            new_bytes=diff.new_bytes,
            added_files=list(diff.added_files),
            changed_files=list(diff.changed_files),
            removed_files=list(diff.removed_files),
            tensors_added=list(diff.tensors_added),
            tensors_removed=list(diff.tensors_removed),
            tensors_changed=[
                TensorChange(
                    name=t.name, dtype=list(t.dtype), shape=[list(t.shape[0]), list(t.shape[1])]
                )
                for t in diff.tensors_changed
            ],
            tensors_same=diff.tensors_same,
            config_compared=diff.config_compared,
            config_changes=[
                ValueChange(key=k, a=a, b=b) for k, (a, b) in diff.config_changes.items()
            ],
            meta_changes=[ValueChange(key=k, a=a, b=b) for k, (a, b) in diff.meta_changes.items()],
        )

    def to_report(self) -> reports.VersionDiff:
        return reports.VersionDiff(
            self.a.to_record(),
            self.b.to_record(),
            reused=tuple(self.reused),
            added_files=tuple(self.added_files),
            changed_files=tuple(self.changed_files),
            removed_files=tuple(self.removed_files),
            new_bytes=self.new_bytes,
            reused_bytes=self.reused_bytes,
            tensors_added=tuple(self.tensors_added),
            tensors_removed=tuple(self.tensors_removed),
            tensors_changed=tuple(
                reports.TensorChange(
                    t.name,
                    (t.dtype[0], t.dtype[1]),
                    (tuple(t.shape[0]), tuple(t.shape[1])),
                )
                for t in self.tensors_changed
            ),
            tensors_same=self.tensors_same,
            config_changes={c.key: (c.a, c.b) for c in self.config_changes},
            meta_changes={
                c.key: (None if c.a is None else str(c.a), None if c.b is None else str(c.b))
                for c in self.meta_changes
            },
            config_compared=self.config_compared,
        )


class ModelCard(Wire, kw_only=True):
    """A version's model card: its README.md (any case, at the root), as text."""

    ref: str
    path: str
    size: int
    digest: str
    text: str
