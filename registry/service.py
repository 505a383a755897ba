"""The public face of a registry: `Registry`, the Python API, and the one thing the CLI, the
REST API and the loader call. Each method is a one-line delegation to the operation that does
the job (`registry.ops`, imported by the method, so a command loads only the operations it runs),
run in this handle's `Context`: who acts, with which role.

The operations keep the write order that makes a crash harmless (key slots and data, then the
manifest, then the catalog in one transaction), check every role, write the audit trail and
count the key unwraps; this module adds nothing to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from registry.config import KmsSettings, Settings, Webhook, default_actor, load_settings
from registry.ops import home as home_ops
from registry.ops.access import check_role
from registry.ops.context import Context, UnwrapCount
from registry.ops.home import rebuild_catalog
from registry.retention import DEFAULT_GRACE, Decision, Policy
from registry.roles import ADMIN, PROMOTER, PUSHER, READER, ROLES
from registry.service_browsing import Browsing

# Each operation's module is imported by the method that runs it, and the rest of the registry
# (catalog, stores, crypto) with it: `ls` and `show` start without what they do not use
# (docs/benchmarks.md, "CLI start-up").
if TYPE_CHECKING:
    from registry import journal
    from registry.blobstore import BlobStore
    from registry.catalog.repository import Catalog
    from registry.crypto.keys import KeyProvider
    from registry.crypto.signing import Signer, TrustedSigner
    from registry.materialize import Progress
    from registry.prepared import PrepareResult
    from registry.provenance import ProvenanceRequest
    from registry.records import (
        AliasMoveRecord,
        AliasRecord,
        AuditRecord,
        AuditVerification,
        DeliveryRecord,
        HoldRecord,
        ModelRecord,
        TokenRecord,
        VersionRecord,
    )
    from registry.replication import BlobReader, ReadReport, ReplicaSet
    from registry.reports import (
        AliasChange,
        BrokeredKeys,
        DrillReport,
        GcReport,
        HoldResult,
        InitResult,
        KeysReport,
        PullResult,
        PushResult,
        RecoveryProofs,
        RegionKey,
        RegionStatus,
        ReplicateReport,
        RotationReport,
        ScrubReport,
        SealedObject,
        VerifyReport,
        VersionDetails,
    )

__all__ = [
    "ADMIN",
    "DEFAULT_GRACE",
    "PROMOTER",
    "PUSHER",
    "READER",
    "ROLES",
    "ReadReport",
    "Registry",
    "rebuild_catalog",
]


def __getattr__(name: str) -> Any:
    # A re-export that would import the stores with this module.
    if name == "ReadReport":
        from registry.replication import ReadReport

        return ReadReport
    raise AttributeError(f"module 'registry.service' has no attribute {name!r}")


def import_serving() -> None:
    """Import the operations a load runs (the serving reads and key unwraps, and the catalog,
    stores and crypto behind them) now rather than on the first load. `registry.loader` calls
    it as serving code imports it, at start-up: the first load then spends its time, and its
    time to first tensor, loading."""
    from registry.ops import queries, serving  # noqa: F401


class Registry(Browsing):
    """An open registry: catalog, stores, keys and signer as configured in a home directory,
    and who acts on it (the local user is admin; the REST API gives each token its role)."""

    def __init__(
        self,
        settings: Settings,
        *,
        actor: str | None = None,
        role: str = ADMIN,
        create_catalog: bool = False,
        provisional: str | None = None,
    ) -> None:
        """Open the catalog and the regions of `settings` (see `ops.home.open_home`)."""
        check_role(role)  # before anything is opened
        home = home_ops.open_home(settings, create_catalog=create_catalog, provisional=provisional)
        self._context = Context(home, actor=actor or default_actor(), role=role)

    @classmethod
    def _over(cls, context: Context) -> Registry:
        registry = cls.__new__(cls)
        registry._context = context
        return registry

    # -- lifecycle of the handle -----------------------------------------------------------

    @classmethod
    def open(
        cls, home: str | Path | None = None, *, actor: str | None = None, role: str = ADMIN
    ) -> Registry:
        """Open the registry in `home` (MODEL_REGISTRY_HOME, default ~/.model-registry).
        Nothing is asked of the stores here: commands that need only the catalog never wait
        on a region."""
        settings = load_settings(Path(home) if home is not None else None)
        return cls(settings, actor=actor, role=role)

    @classmethod
    def open_for_recovery(
        cls,
        home: str | Path | None = None,
        *,
        region: str | None = None,
        replay: bool = True,
        actor: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> Registry:
        """Open the registry for the commands that prove the stores before a rebuild: its
        catalog, else a read-only stand-in replayed from a region's journal (see
        `ops.home.open_for_recovery`)."""
        settings = load_settings(Path(home) if home is not None else None)
        actor = actor or default_actor()
        opened = home_ops.open_for_recovery(
            settings, region=region, replay=replay, actor=actor, on_progress=on_progress
        )
        return cls._over(Context(opened, actor=actor, role=ADMIN))

    @classmethod
    def init(
        cls,
        home: str | Path | None = None,
        *,
        catalog_url: str | None = None,
        store: str | Path | Sequence[str | Path] | None = None,
        key_dir: str | Path | None = None,
        kms: KmsSettings | None = None,
        write_quorum: int | None = None,
    ) -> InitResult:
        """Create a registry in `home`, or check and upgrade the one there (idempotent; see
        `ops.init.init`)."""
        from registry.ops import init as init_ops

        return init_ops.init(
            home,
            catalog_url=catalog_url,
            store=store,
            key_dir=key_dir,
            kms=kms,
            write_quorum=write_quorum,
        )

    def acting_as(self, token: TokenRecord) -> Registry:
        """This registry seen by a token: same catalog and stores, the token's role, and the
        token named as the actor of everything it does (audit trail)."""
        return Registry._over(self._context.for_token(token))

    def close(self) -> None:
        home_ops.close(self._context)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the handle holds -------------------------------------------------------------
    # The catalog, the stores and the keys themselves are the admin's: every rule of the
    # operations (roles, audit) is bypassed through them.

    @property
    def settings(self) -> Settings:
        return self._context.settings

    @property
    def actor(self) -> str:
        return self._context.actor

    @property
    def role(self) -> str:
        return self._context.role

    @property
    def unwraps(self) -> int:
        """Data keys this handle's operations unwrapped."""
        return self._context.unwraps.value

    def counting_unwraps(self) -> AbstractContextManager[UnwrapCount]:
        """Count the data keys the calls made in the block unwrap (on this thread and the
        threads they start, never another caller's): for a caller's own audit details."""
        return self._context.counting_unwraps()

    @property
    def catalog(self) -> Catalog:
        self._context.require("internals")
        return self._context.catalog

    @property
    def replicas(self) -> ReplicaSet:
        self._context.require("internals")
        return self._context.replicas

    @property
    def store(self) -> BlobStore:
        self._context.require("internals")
        return self._context.store

    @property
    def keys(self) -> KeyProvider:
        self._context.require("internals")
        return self._context.keys

    @property
    def signer(self) -> Signer:
        self._context.require("internals")
        return self._context.signer

    @property
    def provisional(self) -> str | None:
        """Where a stand-in catalog came from (None: the registry's own catalog)."""
        return self._context.provisional

    @property
    def sweep_wait(self) -> float:
        return self._context.home.sweep_wait

    @sweep_wait.setter
    def sweep_wait(self, seconds: float) -> None:
        self._context.require("internals")
        self._context.home.sweep_wait = seconds

    @property
    def checkpoints(self) -> dict[str, Callable[[], None]]:
        """Named points where tests pause a push or a gc (shared by every handle over the home)."""
        self._context.require("internals")
        return self._context.home.checkpoints

    # -- operations ------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionRecord:
        from registry.ops import queries as queries_ops

        return queries_ops.resolve(self._context, ref)

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]:
        """The live versions of `name`, oldest first (with `expired`, tombstones too)."""
        from registry.ops import queries as queries_ops

        return queries_ops.versions(self._context, name, expired=expired)

    def models(self) -> list[ModelRecord]:
        from registry.ops import queries as queries_ops

        return queries_ops.models(self._context)

    def audit_events(
        self, *, subject: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        from registry.ops import queries as queries_ops

        return queries_ops.audit_events(self._context, subject=subject, since=since, limit=limit)

    def verify_audit(self) -> AuditVerification:
        """Walk the tamper-evident audit chain (see `Catalog.verify_audit`)."""
        from registry.ops import queries as queries_ops

        return queries_ops.verify_audit(self._context)

    def show(self, ref: str) -> VersionDetails:
        from registry.ops import queries as queries_ops

        return queries_ops.show(self._context, ref)

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
    ) -> PushResult:
        """Push a model directory (or one .safetensors file) as a new version of `name`;
        links that lead outside it are refused unless `follow_symlinks`. `provenance` goes
        into the signed manifest; `signature` is an OpenSSF model signature of the files
        (model.sig), checked against them and the trusted OpenSSF signers."""
        from registry.ops import pushstart as push_ops

        return push_ops.push(
            self._context,
            name,
            path,
            message=message,
            write_quorum=write_quorum,
            progress=progress,
            follow_symlinks=follow_symlinks,
            provenance=provenance,
            signature=signature,
        )

    def pull(
        self,
        ref: str,
        destination: str | Path,
        *,
        force: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> PullResult:
        """Write the files of a version (those `include` matches, less those `exclude`
        matches) under `destination`, byte-identical and verified; files already there with
        the right bytes stay, and an interrupted pull's verified files are taken up."""
        from registry.ops import pull as pull_ops

        return pull_ops.pull(
            self._context,
            ref,
            destination,
            force=force,
            include=include,
            exclude=exclude,
            progress=progress,
        )

    def prepare(
        self,
        ref: str,
        destination: str | Path,
        *,
        include: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> PrepareResult:
        """Write a version's small files (never a `.safetensors` file unless `include` matches
        it) into `destination`, verified, with `registry.json` pinning the resolved version for
        a serving engine's loader (docs/serving.md)."""
        from registry.ops import prepare as prepare_ops

        return prepare_ops.prepare(
            self._context, ref, destination, include=include, progress=progress
        )

    def verify(
        self, ref: str, *, read_data: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        """Check a version: its manifest (signature, digest), and in every region the presence and
        size of every object and its key slot; with `read_data`, decrypt and re-hash everything
        (and, with several regions, read every copy back against its recorded checksum).
        Problems are reported per file (and region) instead of stopping at the first; damaged
        copies are recorded as bad placements for `replicate --repair`."""
        from registry.ops import verify as verify_ops

        return verify_ops.verify(self._context, ref, read_data=read_data, progress=progress)

    def promote(self, ref: str, alias: str, *, reason: str = "") -> AliasChange:
        """Point ALIAS of REF's model at REF (atomic; recorded in the alias history). A protected
        alias moves only for the promoter or admin role."""
        from registry.ops import aliases as aliases_ops

        return aliases_ops.promote(self._context, ref, alias, reason=reason)

    def rollback(
        self, name: str, alias: str, *, to: str | None = None, reason: str = ""
    ) -> AliasChange:
        """Move ALIAS back to the version it pointed at before the current one (repeated rollbacks
        keep going back), or to `to`, a version of the same model."""
        from registry.ops import aliases as aliases_ops

        return aliases_ops.rollback(self._context, name, alias, to=to, reason=reason)

    def rollback_target(self, name: str, alias: str) -> int:
        """The version a plain rollback of the alias would move it to now (nothing moves)."""
        from registry.ops import aliases as aliases_ops

        return aliases_ops.rollback_target(self._context, name, alias)

    def protect_alias(self, name: str, alias: str, *, protected: bool = True) -> AliasRecord:
        from registry.ops import aliases as aliases_ops

        return aliases_ops.protect_alias(self._context, name, alias, protected=protected)

    def aliases(self, name: str) -> list[AliasRecord]:
        from registry.ops import aliases as aliases_ops

        return aliases_ops.aliases(self._context, name)

    def history(
        self, name: str, alias: str | None = None, *, at: datetime | None = None
    ) -> list[AliasMoveRecord]:
        """The moves of the model's aliases (or one), oldest first; with `at`, for each alias the
        move that was in force at that instant (what `production` was at time T)."""
        from registry.ops import aliases as aliases_ops

        return aliases_ops.history(self._context, name, alias, at=at)

    def add_webhook(self, url: str) -> Webhook:
        """Send alias-move events to `url`, signed with a new secret kept in the key directory
        (give the receiver that file's key)."""
        from registry.ops import events as events_ops

        return events_ops.add_webhook(self._context, url)

    def deliver_events(self, *, attempts: int = 3, backoff: float = 0.5) -> list[str]:
        """Deliver every pending event, oldest first, each up to `attempts` times with exponential
        backoff; every attempt is recorded. A URL whose event fails gets none of its later
        events this time (a receiver never sees a newer move before an older one). Returns "url:
        error" for each delivery still pending."""
        from registry.ops import events as events_ops

        return events_ops.deliver_events(self._context, attempts=attempts, backoff=backoff)

    def set_retention(
        self,
        name: str | None,
        *,
        keep_last: int | None = None,
        keep_within: str | None = None,
        keep_demoted_for: str | None = None,
        clear: bool = False,
    ) -> Policy:
        """Set the retention policy of model `name` (None: the registry-wide default). A
        `keep_within` shorter than the store's Object Lock minimum is refused: the registry
        could not delete those versions anyway, and saying otherwise would mislead."""
        from registry.ops import lifecycle as lifecycle_ops

        return lifecycle_ops.set_retention(
            self._context,
            name,
            keep_last=keep_last,
            keep_within=keep_within,
            keep_demoted_for=keep_demoted_for,
            clear=clear,
        )

    def retention(self, name: str) -> tuple[Policy, str]:
        """The policy in force for model `name` and its source (the model, "*", or "none")."""
        from registry.ops import lifecycle as lifecycle_ops

        return lifecycle_ops.retention(self._context, name)

    def plan_retention(
        self, name: str | None = None, *, now: datetime | None = None
    ) -> list[tuple[str, Policy, list[Decision]]]:
        """Dry run: for each model (or `name`), which versions its policy keeps and why."""
        from registry.ops import lifecycle as lifecycle_ops

        return lifecycle_ops.plan_retention(self._context, name, now=now)

    def delete(self, ref: str, *, reason: str, dry_run: bool = False) -> VersionRecord:
        """Delete one version outside the policy (admin): it becomes a tombstone, still in the
        audit trail, and gc sweeps its objects once nothing else needs them. Refused while an
        alias, a legal hold, an Object Lock or a retention rule keeps it; `dry_run` checks
        all of that and changes nothing."""
        from registry.ops import lifecycle as lifecycle_ops

        return lifecycle_ops.delete(self._context, ref, reason=reason, dry_run=dry_run)

    def gc(
        self,
        *,
        dry_run: bool = False,
        grace: str | timedelta = DEFAULT_GRACE,
        now: datetime | None = None,
    ) -> GcReport:
        """Expire what the retention policies no longer keep, extend the Object Lock of what they
        keep, then sweep the objects no live version references."""
        from registry.ops import gc as gc_ops

        return gc_ops.gc(self._context, dry_run=dry_run, grace=grace, now=now)

    def create_token(
        self,
        name: str,
        *,
        role: str,
        models: Sequence[str],
        expires: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new API token (admin): returns its record and its text, which is shown once and never
        stored (the catalog keeps a SHA-256 of its secret). `models` are name patterns (`org/*`,
        `team/llama`, `*`) the token may act on."""
        from registry.ops import tokens as tokens_ops

        return tokens_ops.create_token(
            self._context, name, role=role, models=models, expires=expires
        )

    def tokens(self) -> list[TokenRecord]:
        from registry.ops import tokens as tokens_ops

        return tokens_ops.tokens(self._context)

    def revoke_token(self, token_id: str) -> TokenRecord:
        from registry.ops import tokens as tokens_ops

        return tokens_ops.revoke_token(self._context, token_id)

    def authenticate(self, text: str) -> TokenRecord:
        """The live token `text` is, or UnauthenticatedError: one message for a malformed, unknown,
        wrong, expired or revoked token, so a guess learns nothing."""
        from registry.ops import tokens as tokens_ops

        return tokens_ops.authenticate(self._context, text)

    def sealed_size(self, kind: str, digest: str) -> int:
        """The size of an object's sealed form (what ranged ciphertext reads address)."""
        from registry.ops import serving as serving_ops

        return serving_ops.sealed_size(self._context, kind, digest)

    def blob_key(self, version: VersionRecord, digest: str) -> bytes:
        """The data key of one of a version's files, unwrapped (counted)."""
        from registry.ops import serving as serving_ops

        return serving_ops.blob_key(self._context, version, digest)

    def blob_reader(self, digest: str, report: ReadReport, *, what: str) -> BlobReader:
        """Sealed bytes of a stored file: each range from the first region that serves it, a
        damaged range read again from the next (what the loader reads through)."""
        from registry.ops import serving as serving_ops

        return serving_ops.blob_reader(self._context, digest, report, what=what)

    def prepare_load_record(self) -> None:
        """A load has its first tensor: what its audit entry needs (the catalog through
        SQLAlchemy) is opened on a thread of its own while the rest streams."""
        from registry.ops import serving as serving_ops

        return serving_ops.prepare_load_record(self._context)

    def record_load(
        self, version: VersionRecord, details: dict[str, Any], report: ReadReport
    ) -> None:
        """Audit a load by the loader (like a pull: who read which version), and record the copies
        it found damaged or missing (for `regions status` and `replicate --repair`), with a
        warning per region it had to read around."""
        from registry.ops import serving as serving_ops

        return serving_ops.record_load(self._context, version, details, report)

    def data_keys(self, version: VersionRecord) -> dict[tuple[str, str], bytes]:
        """The data keys of a version's manifest and files, unwrapped (the key broker's answer);
        each unwrap is counted."""
        from registry.ops import serving as serving_ops

        return serving_ops.data_keys(self._context, version)

    def drain_journal(self) -> list[journal.RegionJournal]:
        """Copy the catalog's new journal entries to every region (after each change and on the
        server's timer); a region that cannot take them is reported, and caught up later.
        `CatalogBehindError` when a store holds journal entries this catalog lacks."""
        from registry.ops import journaling as journaling_ops

        return journaling_ops.drain_journal(self._context)

    def new_journal_epoch(self) -> str:
        """Make this catalog's journal the newest in the stores (a new epoch, later than any they
        hold, written whole by the drain that follows): for a catalog restored from a backup
        (older than a rebuild, or behind the stores), once it is certain that this is the
        catalog to keep. What the stores' journal holds beyond it is no longer followed."""
        from registry.ops import journaling as journaling_ops

        return journaling_ops.new_journal_epoch(self._context)

    def stored_journals(self) -> list[journal.StoredJournal]:
        """Each region's journal as its store holds it (no catalog needed: what a rebuild from it
        would restore), read in parallel, each within its requests' deadlines."""
        from registry.ops import journaling as journaling_ops

        return journaling_ops.stored_journals(self._context)

    def journal_status(self, *, check: bool = True) -> list[journal.RegionJournal]:
        """How far each region's journal goes by the catalog's marks; with `check`,
        `CatalogBehindError` when a store shows the catalog is behind it (checked as before a
        change; without it, the catalog alone is read: metrics)."""
        from registry.ops import journaling as journaling_ops

        return journaling_ops.journal_status(self._context, check=check)

    def scrub(
        self,
        *,
        read_data: bool = False,
        sample: float | None = None,
        region: str | None = None,
        progress: Progress | None = None,
    ) -> ScrubReport:
        """Check every object the catalog knows in every region (or `region`): present, the size
        its header says, its key slot opens it; with `read_data`, every chunk decrypted and
        every blob re-hashed. `sample` (percent) checks a random share of the objects. Bad
        copies are recorded as bad placements, which `replicate --repair` then replaces from a
        good copy. Objects in the stores that no catalog row knows are listed as orphans (never
        deleted here)."""
        from registry.ops import scrub as scrub_ops

        return scrub_ops.scrub(
            self._context, read_data=read_data, sample=sample, region=region, progress=progress
        )

    def drill(
        self,
        *,
        region: str | None = None,
        alias: str = "production",
        sample: int | None = None,
        progress: Progress | None = None,
    ) -> DrillReport:
        """A restore drill: as if every other region were gone, restore from `region` alone
        (default: the last in read order, the one furthest from the primary) each model's
        `alias` (its newest version when it has none): its manifest authenticated with that
        region's own key slot and its signature checked, every file decrypted and re-hashed
        (with `sample`, that many random chunks of each file, authenticated), and every
        safetensors header parsed and compared with the manifest's. Timed per model and in
        total; audited (`drill`), so when the backups were last proven is on record. Only the
        drilled region is asked anything: the others may be down or hung."""
        from registry.ops import drill as drill_ops

        return drill_ops.drill(
            self._context, region=region, alias=alias, sample=sample, progress=progress
        )

    def regions_status(self) -> list[RegionStatus]:
        """Each region probed now, all at once and each within a request's deadline (its marker and
        naming key read): `ok`, `unreachable`, `hung` (no answer in time) or `foreign` (not this
        registry's store), with the catalog's counts of verified, pending and bad copies and of
        copies it has no record of (none counted on a stand-in)."""
        from registry.ops import regions as regions_ops

        return regions_ops.regions_status(self._context)

    def replicate(
        self, *, repair: bool = False, progress: Progress | None = None
    ) -> ReplicateReport:
        """Bring every region to a full, verified copy of every object a version references."""
        from registry.ops import regions as regions_ops

        return regions_ops.replicate(self._context, repair=repair, progress=progress)

    def hold(self, ref: str, *, reason: str) -> HoldResult:
        """Place a legal hold on a version: recorded in the catalog, and on every object of the
        version (data, manifest, key slots) in every region whose store has legal holds."""
        from registry.ops import holds as holds_ops

        return holds_ops.hold(self._context, ref, reason=reason)

    def release_hold(self, ref: str, *, reason: str) -> HoldResult:
        """Release a version's legal hold; objects another held version shares stay held."""
        from registry.ops import holds as holds_ops

        return holds_ops.release_hold(self._context, ref, reason=reason)

    def holds(self) -> list[HoldRecord]:
        from registry.ops import holds as holds_ops

        return holds_ops.holds(self._context)

    def region_keys(self) -> tuple[RegionKey, ...]:
        """Each region's key-encryption key (its KMS key, else the local key file) and, during a
        rotation, the keys it is moving away from, in read preference order."""
        from registry.ops import rotation as rotation_ops

        return rotation_ops.region_keys(self._context)

    def rotate_keys(
        self, to: str, *, region: str | None = None, progress: Progress | None = None
    ) -> RotationReport:
        """Move every key slot of the regions under one key-encryption key to `to` (a key file
        path, created when missing, or a KMS key id/ARN/alias): config.toml switches first (new
        objects are wrapped by the new key, both keys unwrap), then every object gets a slot
        under the new key, then the old slots are retired and the old key leaves config.toml. No
        data is re-encrypted. Interrupted, it runs again from where it stopped."""
        from registry.ops import rotation as rotation_ops

        return rotation_ops.rotate_keys(self._context, to, region=region, progress=progress)

    def trust_signer(self, name: str, public_key: str) -> TrustedSigner:
        """Add a public key (e.g. a CI signer's) to the trusted signers in config.toml."""
        from registry.ops import signers as signers_ops

        return signers_ops.trust_signer(self._context, name, public_key)

    def untrust_signer(self, name: str) -> None:
        from registry.ops import signers as signers_ops

        return signers_ops.untrust_signer(self._context, name)

    def new_signing_key(self) -> str:
        """Replace this home's signing key with a new one (the old key stays trusted so its
        manifests still verify); returns the new public key to trust elsewhere."""
        from registry.ops import signers as signers_ops

        return signers_ops.new_signing_key(self._context)

    # -- serving, status and keys for the API and the CLI (they touch nothing below this) ----

    def sealed_object(self, ref: str, path: str | None = None) -> SealedObject:
        """The sealed form of a version's file `path` (None: its manifest), with its size."""
        from registry.ops import serving as serving_ops

        return serving_ops.sealed_object(self._context, ref, path)

    def read_sealed(self, target: SealedObject, offset: int, length: int) -> bytes:
        """Sealed bytes [offset, offset + length) of `target` (fewer at its end): ciphertext."""
        from registry.ops import serving as serving_ops

        return serving_ops.read_sealed(self._context, target, offset, length)

    def broker_keys(self, ref: str, *, token: str | None = None) -> BrokeredKeys:
        """The key broker: a version's data keys, audited with the unwraps they took."""
        from registry.ops import serving as serving_ops

        return serving_ops.broker_keys(self._context, ref, token=token)

    def region_names(self) -> tuple[str, ...]:
        """The configured regions' names, in read preference order (none is asked anything)."""
        from registry.ops import serving as serving_ops

        return serving_ops.region_names(self._context)

    def recovery_proofs(self) -> RecoveryProofs:
        """The last drill from each region and the last full scrub, from the audit trail."""
        from registry.ops import serving as serving_ops

        return serving_ops.recovery_proofs(self._context)

    def deliveries(self, *, pending_only: bool = False, limit: int = 100) -> list[DeliveryRecord]:
        """The recorded deliveries of events to webhooks, newest first."""
        from registry.ops import events as events_ops

        return events_ops.deliveries(self._context, pending_only=pending_only, limit=limit)

    def check_permission(self, operation: str) -> None:
        """PermissionDeniedError unless this handle's role may do `operation`, as it would."""
        from registry.ops import serving as serving_ops

        return serving_ops.check_permission(self._context, operation)

    def key_report(self) -> KeysReport:
        """The signing key, each region's key-encryption key and the trusted signers."""
        from registry.ops import keyinfo as keyinfo_ops

        return keyinfo_ops.key_report(self._context)
