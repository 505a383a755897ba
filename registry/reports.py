"""What the operations report: the results of init, push, pull, verify, scrub, drill, gc, holds,
alias moves, replication and key rotation, as plain frozen values. With the records
(`registry.records`) they are the vocabulary of every caller; `registry.wire` gives their JSON.
`parse_config` reads a config.json as a diff and a page of the web UI show it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from registry.manifest import Manifest
from registry.records import (
    AliasMoveRecord,
    AliasRecord,
    AuditRecord,
    HoldRecord,
    ModelRecord,
    ModelSummary,
    SearchHit,
    TagRecord,
    UploadSessionRecord,
    VersionRecord,
    VersionState,
)
from registry.retention import Decision, Policy


@dataclass(frozen=True)
class InitResult:
    home: Path
    created: bool
    registry_id: str
    catalog_url: str
    store: str
    keys: str
    public_key: str


@dataclass(frozen=True)
class PushResult:
    version: VersionRecord
    created: bool
    uploaded_bytes: int
    reused_bytes: int
    files: int
    pending_regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class UploadKeys:
    """An upload session and the data key each of its files is sealed with (by file index):
    what a client needs to seal and send its files."""

    session: UploadSessionRecord
    keys: dict[int, bytes] = field(repr=False)
    # By file index: how many parts its sealed form is sent in, and that form's size.
    parts: dict[int, int] = field(default_factory=dict)
    sealed_sizes: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PullResult:
    """`files`: written by this pull (`bytes` of them); `unchanged`: already there, right."""

    version: VersionRecord
    destination: Path
    files: tuple[str, ...]
    bytes: int
    bad_copies: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str


@dataclass(frozen=True)
class ScrubProblem:
    """A stored copy that is missing, damaged or unreadable, and the versions it breaks."""

    region: str
    kind: str
    digest: str
    name: str
    problem: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Orphan:
    """An object in a store that no catalog row knows (a push that crashed before its commit,
    or something that is not the registry's)."""

    region: str
    name: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class ScrubReport:
    read_data: bool
    objects: int  # distinct objects checked
    copies: int  # copies checked (objects x regions)
    sampled: float | None  # percent, when a sample was checked
    problems: tuple[ScrubProblem, ...] = field(default=())
    orphans: tuple[Orphan, ...] = field(default=())
    unchecked: tuple[str, ...] = field(default=())  # regions that could not be reached

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unchecked


@dataclass(frozen=True)
class DrillModel:
    """One model's part of a restore drill."""

    name: str
    ref: str  # the version restored ("" when it could not be resolved)
    via: str  # the alias it was resolved through, or "newest"
    files: int
    bytes: int  # plaintext bytes decrypted and verified
    seconds: float
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class DrillReport:
    region: str
    mode: str  # "all" (every byte) or "sample:N" (N random chunks a file)
    models: tuple[DrillModel, ...]
    seconds: float
    at: datetime

    @property
    def ok(self) -> bool:
        return all(model.ok for model in self.models)


@dataclass(frozen=True)
class VerifyReport:
    version: VersionRecord
    read_data: bool
    checked_files: int
    checked_bytes: int
    problems: tuple[FileProblem, ...] = field(default=())
    unchecked: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RegionStatus:
    """One region's health and what the catalog knows of its copies."""

    name: str
    priority: int
    store: str
    keys: str
    reachable: bool
    detail: str
    seconds: float
    verified: int
    pending: int
    bad: int
    missing: int
    # ok | unreachable (refused, failed) | hung (no answer within the deadline) |
    # foreign (another registry's store, or another naming key)
    state: str = "ok"
    counted: bool = True  # False: no catalog to count copies from (a stand-in)

    @property
    def complete(self) -> bool:
        if not self.counted:
            return self.reachable
        return self.reachable and not (self.pending or self.bad or self.missing)


@dataclass(frozen=True)
class ReplicateReport:
    objects: int
    copied: int
    repaired: int
    verified: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class HoldResult:
    hold: HoldRecord
    changed: bool
    objects: int
    failed_regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AliasChange:
    """An alias move: the move made (None when it already pointed there) and the alias now."""

    move: AliasMoveRecord | None
    alias: AliasRecord
    undelivered: tuple[str, ...] = ()
    unlocked: tuple[str, ...] = ()  # regions where the version's Object Lock was not extended


@dataclass(frozen=True)
class SweptObject:
    """An object gc deleted (or, in a dry run, would delete) and the bytes it held per region."""

    purpose: str
    digest: str
    sizes: tuple[tuple[str, int], ...]

    @property
    def bytes(self) -> int:
        return sum(size for _region, size in self.sizes)


@dataclass(frozen=True)
class KeptObject:
    """An unreferenced object gc left in place, and why."""

    purpose: str
    digest: str
    reason: str
    # (region, why) for each region whose store keeps it (an Object Lock, a legal hold, a lock
    # state that could not be read, a deletion the store refused); empty for the catalog's
    # reasons (a lease, a claim, the grace window), which hold in every region alike.
    regions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    grace: timedelta
    expired: tuple[VersionRecord, ...]
    locks_extended: int
    swept: tuple[SweptObject, ...]
    kept: tuple[KeptObject, ...]
    problems: tuple[str, ...] = ()

    @property
    def bytes_reclaimed(self) -> int:
        return sum(item.bytes for item in self.swept)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class RegionKey:
    """The key-encryption key that wraps a region's data keys, as `keys show` lists it."""

    region: str
    provider: str  # "local" (the key file) or "aws-kms"
    kek_id: str
    key: str  # the key file's path, or the KMS key as configured (id, ARN or alias)
    kms_region: str | None = None
    endpoint: str | None = None
    # The keys a rotation is moving away from (they only unwrap), as configured, each with its
    # kek id (None: a previous key file that is gone).
    previous: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class RotationReport:
    """What a key rotation did: every object's slot moved to `to`, the old keys retired."""

    to: str
    retired: tuple[str, ...]
    regions: tuple[str, ...]
    objects: int
    slots_written: int
    catalog_slots_retired: int
    old_slot_objects_deleted: int
    old_slot_objects_locked: int
    created_key_file: str | None
    seconds: float
    # Old keys other regions still use: their slots stay, and the key must not be destroyed.
    still_used: tuple[str, ...] = ()
    # Objects whose only slots are under a key whose file is gone: nothing opens them.
    unrecoverable: int = 0


@dataclass(frozen=True)
class VersionDetails:
    version: VersionRecord
    manifest: Manifest
    signer: str
    tags: tuple[str, ...] = ()  # its tags now, sorted (mutable: not part of the manifest)


@dataclass(frozen=True)
class SealedObject:
    """One stored object of a version, as ranged ciphertext reads address it: a file's blob or
    the version's manifest, and the size of its sealed form."""

    version: VersionRecord
    kind: str  # "blob" or "manifest"
    digest: str
    size: int


@dataclass(frozen=True)
class BrokeredKeys:
    """The key broker's answer: the data keys of a version's manifest and files, by (kind,
    digest), and how many keys were unwrapped to give them (what its audit entry records)."""

    version: VersionRecord
    keys: Mapping[tuple[str, str], bytes]
    unwraps: int
    # (kind, digest) -> (object id, sealed size): where each object is read at
    # /v1/objects/{id}, the URL caches share.
    objects: Mapping[tuple[str, str], tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class SignerKey:
    """A trusted signer's public key."""

    name: str
    key_id: str
    public_key: str  # ed25519:BASE64


@dataclass(frozen=True)
class KeysReport:
    """What `keys show` lists: the signing key, each region's key-encryption key and the
    trusted signers (public material only)."""

    signing_public_key: str
    signing_key_id: str
    kek_id: str  # the preferred region's key-encryption key
    kek_file: str | None  # the local key file (None when every region uses KMS)
    regions: tuple[RegionKey, ...]
    trusted_signers: tuple[SignerKey, ...]


@dataclass(frozen=True)
class DrillProof:
    """The last restore drill from one region, as the audit trail records it."""

    region: str
    at: datetime
    ok: bool
    seconds: float


@dataclass(frozen=True)
class ScrubProof:
    """The last full scrub (every region, no sample): when, and the bad copies plus the regions
    it could not check."""

    at: datetime
    problems: float


@dataclass(frozen=True)
class RecoveryProofs:
    """When the backups were last proven (whoever ran the proofs, on whichever host)."""

    drills: tuple[DrillProof, ...]
    scrub: ScrubProof | None


@dataclass(frozen=True)
class ModelList:
    """A page of the REST API's list of models, by name: the models on it and the name the
    next page starts after (None on the last page)."""

    models: tuple[ModelRecord, ...]
    next: str | None


@dataclass(frozen=True)
class VersionList:
    """A page of the REST API's list of a model's versions, oldest first: the versions on it
    and the number the next page starts after (None on the last page)."""

    versions: tuple[VersionRecord, ...]
    next: int | None


@dataclass(frozen=True)
class ModelPage:
    """One page of a model listing: the models on it, which page (from 1) of how many of
    `size`, and how many models matched in all."""

    models: tuple[ModelSummary, ...]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


@dataclass(frozen=True)
class VersionRow:
    """A version as a model's page lists it: the record, the aliases, hold and copies per
    region beside it, and what retention decides for it (None for a tombstone)."""

    version: VersionRecord
    state: VersionState
    decision: Decision | None


@dataclass(frozen=True)
class ModelOverview:
    """A model's page: its summary, one page of its versions (newest first), its aliases'
    newest moves, the retention policy in force and where that policy comes from, and the
    regions its copies are counted in."""

    summary: ModelSummary
    versions: tuple[VersionRow, ...]
    number: int
    size: int
    total: int
    timeline: tuple[AliasMoveRecord, ...]
    policy: Policy
    policy_source: str
    regions: tuple[str, ...]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


@dataclass(frozen=True)
class AuditPage:
    """A page of the audit trail, newest first; `older` is the id to continue below (None:
    this page reaches the oldest entry that matches)."""

    events: tuple[AuditRecord, ...]
    older: int | None


@dataclass(frozen=True)
class TensorChange:
    """A tensor present in both versions whose shape or dtype differs."""

    name: str
    dtype: tuple[str, str]
    shape: tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class VersionDiff:
    """What changed from version `a` to version `b` of a model (or of two models): files whose
    content `b` reuses and files with new bytes, tensors added, removed and changed, the keys of
    config.json that differ (key -> (value in a, value in b); None: absent) and the metadata
    keys that differ (the same way). `config_compared` is False when the configs were not read
    (the REST API's answer: the server never sends a file's plaintext, its client compares
    them itself)."""

    a: VersionRecord
    b: VersionRecord
    reused: tuple[str, ...]  # paths in b whose content a already has
    added_files: tuple[str, ...]
    changed_files: tuple[str, ...]  # same path, other content
    removed_files: tuple[str, ...]
    new_bytes: int  # plaintext bytes of b that a does not hold
    reused_bytes: int
    tensors_added: tuple[str, ...]
    tensors_removed: tuple[str, ...]
    tensors_changed: tuple[TensorChange, ...]
    tensors_same: int
    config_changes: Mapping[str, tuple[object, object]]
    meta_changes: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    config_compared: bool = True


def config_changes(
    a: Mapping[str, object], b: Mapping[str, object], *, prefix: str = ""
) -> dict[str, tuple[object, object]]:
    """The keys of two JSON objects (configs) whose values differ, nested objects flattened
    with dots (a missing key: None)."""
    changes: dict[str, tuple[object, object]] = {}
    for key in sorted(a.keys() | b.keys()):
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            changes.update(config_changes(left, right, prefix=f"{prefix}{key}."))
        elif left != right or (key in a) != (key in b):
            changes[f"{prefix}{key}"] = (left, right)
    return changes


@dataclass(frozen=True)
class TagChange:
    """A tag added to or removed from a version; `changed` is False when the version already
    had it (an add changes nothing then)."""

    tag: TagRecord
    changed: bool


@dataclass(frozen=True)
class SearchResult:
    """A search: its hits newest first, at most the limit asked, and whether there were more."""

    query: str
    hits: tuple[SearchHit, ...]
    more: bool


@dataclass(frozen=True)
class OpenSSFKey:
    """The public key of the registry's OpenSSF signer: PEM, and its SHA-256 fingerprint (of
    the DER SubjectPublicKeyInfo: what a push records as a key signer's identity)."""

    pem: bytes
    fingerprint: str


# Real configs nest a few levels (a multimodal model's text_config, a rope_scaling in it). A
# deeper one is refused before anything walks, compares or prints it: each level is a frame of
# the stack, and json.loads itself gives up with RecursionError at about a thousand.
MAX_CONFIG_DEPTH = 64


class ConfigTooDeepError(ValueError):
    """A config.json nested deeper than MAX_CONFIG_DEPTH."""


def parse_config(data: bytes) -> object:
    """config.json's bytes as a JSON value, as a diff's `config_changes` and the web UI's
    summary read them; ValueError when they are not JSON, and ConfigTooDeepError (a
    ValueError) when they nest deeper than MAX_CONFIG_DEPTH."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ConfigTooDeepError("config.json is nested too deeply") from None
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigTooDeepError("config.json is nested too deeply")
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return value


def config_object(data: bytes) -> dict[str, Any] | None:
    """config.json's bytes as the JSON object a diff compares, or None when they are not one
    (not JSON, nested too deeply, another kind of value)."""
    try:
        value = parse_config(data)
    except ValueError:  # not JSON (UnicodeDecodeError is one), or nested too deeply
        return None
    return value if isinstance(value, dict) else None
