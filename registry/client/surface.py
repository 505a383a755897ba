"""`RegistrySurface`: what the CLI asks of a registry, whether it is a local home (`Registry`) or
a server (`RemoteRegistry`). Both satisfy it, and mypy checks that they do (the CLI opens one or
the other as this type, and the assertions at the end of this module): a method the client
lacks is a type error, not a surprise at run time. What the REST API does not offer, the client
still has, raising `NotOfferedError` ("run it on the registry server").

The journal's states are described by their shape (`registry.wire.RegionJournalLike`,
`StoredJournalLike`) and a trusted signer by `TrustedSignerLike`: the CLI reads them, and needs
nothing of the layers that make them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from registry import wire
from registry.records import (
    AliasMoveRecord,
    AliasRecord,
    AuditRecord,
    AuditVerification,
    DeliveryRecord,
    HoldRecord,
    ModelRecord,
    TagRecord,
    VersionRecord,
)
from registry.reports import (
    AliasChange,
    DrillReport,
    GcReport,
    HoldResult,
    KeysReport,
    OpenSSFKey,
    PullResult,
    PushResult,
    RegionStatus,
    ReplicateReport,
    RotationReport,
    ScrubReport,
    SearchResult,
    TagChange,
    VerifyReport,
    VersionDetails,
    VersionDiff,
)
from registry.retention import Decision, Policy

if TYPE_CHECKING:
    from registry.config import Webhook
    from registry.materialize import Progress
    from registry.prepared import PrepareResult
    from registry.provenance import ProvenanceRequest


class TrustedSignerLike(Protocol):
    """A signer whose manifests are trusted: its name and key id."""

    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> str: ...


class RegistrySurface(Protocol):
    """The methods (and their types) the CLI calls on the registry it works on."""

    @property
    def provisional(self) -> str | None:
        """Where a stand-in catalog came from (None: the registry's own catalog)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # -- models and versions
    def models(self) -> list[ModelRecord]: ...

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]: ...

    def resolve(self, ref: str) -> VersionRecord: ...

    def show(self, ref: str) -> VersionDetails: ...

    def openssf_public_key(self) -> OpenSSFKey: ...

    def openssf_signature(self, ref: str) -> bytes: ...

    def push(
        self,
        name: str,
        path: str | Path,
        *,
        message: str = "",
        write_quorum: int | None = None,
        progress: Progress | None = None,
        follow_symlinks: bool = False,
        provenance: ProvenanceRequest | None = None,
        signature: bytes | None = None,
    ) -> PushResult: ...

    def set_signer_policy(
        self, name: str, signers: Sequence[str], *, alias: str | None = None
    ) -> dict[str, tuple[str, ...]]: ...

    def clear_signer_policy(self, name: str, *, alias: str | None = None) -> None: ...

    def signer_policies(self, name: str) -> dict[str, tuple[str, ...]]: ...

    def pull(
        self,
        ref: str,
        destination: str | Path,
        *,
        force: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> PullResult: ...

    def prepare(
        self,
        ref: str,
        destination: str | Path,
        *,
        include: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> PrepareResult: ...

    def verify(
        self, ref: str, *, read_data: bool = False, progress: Progress | None = None
    ) -> VerifyReport: ...

    # -- aliases
    def promote(self, ref: str, alias: str, *, reason: str = "") -> AliasChange: ...

    def rollback(
        self, name: str, alias: str, *, to: str | None = None, reason: str = ""
    ) -> AliasChange: ...

    def protect_alias(self, name: str, alias: str, *, protected: bool = True) -> AliasRecord: ...

    def aliases(self, name: str) -> list[AliasRecord]: ...

    def history(
        self, name: str, alias: str | None = None, *, at: datetime | None = None
    ) -> list[AliasMoveRecord]: ...

    # -- tags, search, diff, small files
    def add_tag(self, ref: str, tag: str) -> TagChange: ...

    def remove_tag(self, ref: str, tag: str) -> TagChange: ...

    def tags(self, ref: str) -> list[TagRecord]: ...

    def tagged(
        self, tag: str, *, name: str | None = None, expired: bool = False
    ) -> list[VersionRecord]: ...

    def search(self, query: str, *, model: str | None = None, limit: int = 50) -> SearchResult: ...

    def diff(self, a: str, b: str) -> VersionDiff: ...

    def read_small_file(self, ref: str, path: str) -> bytes: ...

    # -- retention, holds, gc, delete, audit
    def set_retention(
        self,
        name: str | None,
        *,
        keep_last: int | None = None,
        keep_within: str | None = None,
        keep_demoted_for: str | None = None,
        clear: bool = False,
    ) -> Policy: ...

    def retention(self, name: str) -> tuple[Policy, str]: ...

    def plan_retention(
        self, name: str | None = None
    ) -> list[tuple[str, Policy, list[Decision]]]: ...

    def hold(self, ref: str, *, reason: str) -> HoldResult: ...

    def release_hold(self, ref: str, *, reason: str) -> HoldResult: ...

    def holds(self) -> list[HoldRecord]: ...

    def gc(self, *, dry_run: bool = False, grace: str = "24h") -> GcReport: ...

    def delete(self, ref: str, *, reason: str, dry_run: bool = False) -> VersionRecord: ...

    def audit_events(
        self, *, subject: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AuditRecord]: ...

    def verify_audit(self) -> AuditVerification: ...

    # -- the stores: scrub, drill, regions, replication, the journal (on the server's host)
    def scrub(
        self,
        *,
        read_data: bool = False,
        sample: float | None = None,
        region: str | None = None,
        progress: Progress | None = None,
    ) -> ScrubReport: ...

    def drill(
        self,
        *,
        region: str | None = None,
        alias: str = "production",
        sample: int | None = None,
        progress: Progress | None = None,
    ) -> DrillReport: ...

    def regions_status(self) -> list[RegionStatus]: ...

    def replicate(
        self, *, repair: bool = False, progress: Progress | None = None
    ) -> ReplicateReport: ...

    def journal_status(self, *, check: bool = True) -> Sequence[wire.RegionJournalLike]: ...

    def drain_journal(self) -> Sequence[wire.RegionJournalLike]: ...

    def new_journal_epoch(self) -> str: ...

    def stored_journals(self) -> Sequence[wire.StoredJournalLike]: ...

    # -- events and keys (on the server's host)
    def add_webhook(self, url: str) -> Webhook: ...

    def deliveries(
        self, *, pending_only: bool = False, limit: int = 100
    ) -> list[DeliveryRecord]: ...

    def deliver_events(self, *, attempts: int = 3, backoff: float = 0.5) -> list[str]: ...

    def key_report(self) -> KeysReport: ...

    def trust_signer(self, name: str, public_key: str) -> TrustedSignerLike: ...

    def untrust_signer(self, name: str) -> None: ...

    def new_signing_key(self) -> str: ...

    def rotate_keys(
        self, to: str, *, region: str | None = None, progress: Progress | None = None
    ) -> RotationReport: ...


if TYPE_CHECKING:
    # Both implementations satisfy the surface (checked by mypy, nothing runs).
    from registry.client.remote import RemoteRegistry
    from registry.service import Registry

    def _local(registry: Registry) -> RegistrySurface:
        return registry

    def _remote(registry: RemoteRegistry) -> RegistrySurface:
        return registry
