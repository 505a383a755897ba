"""`RemoteRegistry`: a registry server spoken to with one token (see `registry.client`)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import json as _json_module
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

from registry import errors, wire
from registry.client import upload
from registry.client.transport import ERRORS, Response, Transport, retry_after
from registry.config import ENV_CACHE_URL, client_cache_url
from registry.crypto import sealed
from registry.errors import IntegrityError, InvalidInputError, RegistryError, StorageError
from registry.manifest import ManifestFile
from registry.materialize import (
    FileOpener,
    NoProgress,
    Progress,
    pull_files,
    select_files,
    storage_error,
)
from registry.prepared import PrepareResult, prepare_folder, select
from registry.provenance import ProvenanceRequest
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
    config_changes,
    config_object,
)
from registry.retention import Decision, Policy

if TYPE_CHECKING:
    from registry.client.surface import TrustedSignerLike
    from registry.config import Webhook

RANGE = 8 * 1024 * 1024  # bytes per ranged download request
LIST_PAGE = 1000  # models or versions asked for per page of a list (the server's most)
PARALLEL = 4  # requests in flight
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
RETRIES = 5
RATE_LIMIT_PATIENCE = 120.0  # seconds a request waits out 429 answers before it gives up
# A small file read whole into memory (a model card, a config), as the server's own limit.
MAX_SMALL_FILE = 4 * 1024 * 1024
CONFIG = "config.json"


class NotOfferedError(InvalidInputError):
    """An operation the REST API does not offer (administration of the server, proofs that read
    every store): it runs on the registry server's host."""

    code = "not_offered"
    default_hint = "run it on the registry server (unset MODEL_REGISTRY_URL there)"


def _not_offered(operation: str, command: str) -> NoReturn:
    raise NotOfferedError(
        f"`{operation}` is not available through the REST API",
        hint=f"run it on the registry server (unset MODEL_REGISTRY_URL there): "
        f"`model-registry {command}`",
    )


@dataclass(frozen=True)
class _Settings:
    """The server's URL, as `settings.url` (the server's own settings are not exposed)."""

    url: str


class RemoteRegistry:
    """A registry server spoken to with one token."""

    # The server works on its own catalog: never a stand-in (see Registry.open_for_recovery).
    provisional: str | None = None

    def __init__(
        self, url: str, token: str, *, timeout: float = 120.0, cache_url: str | None = None
    ) -> None:
        """`cache_url`: an HTTP cache in front of the server that ciphertext is read through,
        at the server's object URLs (docs/loader.md); None: MODEL_REGISTRY_CACHE_URL, if set;
        "": none."""
        if not url.startswith(("http://", "https://")):
            raise InvalidInputError(
                f"invalid registry URL {url!r}", hint="MODEL_REGISTRY_URL=https://host:port"
            )
        if not token:
            raise errors.UnauthenticatedError(
                "MODEL_REGISTRY_URL is set but no token",
                hint="set MODEL_REGISTRY_TOKEN (or pass --token)",
            )
        self.url = url.rstrip("/")
        self.settings = _Settings(self.url)
        self._transport = Transport(self.url, token, timeout=timeout)
        self.cache_url = (
            client_cache_url() if cache_url is None else cache_url.rstrip("/")
        ) or None
        # Object URLs are keyed by content: the same cache serves every server of a registry.
        self._cache = (
            None if self.cache_url is None else Transport(self.cache_url, token, timeout=timeout)
        )
        # A file's digest -> its object id and sealed size, from the key broker's answers.
        self._objects: dict[str, tuple[str, int]] = {}
        self._token_tag = hashlib.sha256(token.encode()).hexdigest()[:16]
        self.last_push_sent = 0  # bytes the last push sent (a resumed push sends only the rest)

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        self._transport.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        content: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        wait: bool = False,
        via: Transport | None = None,
    ) -> Response:
        """One request to the server (`via`: to the cache in front of it), retried where
        that is safe."""
        transport, where = (self._transport, "registry server") if via is None else (via, "cache")
        base = self.url if via is None else self.cache_url
        body, extra = content, dict(headers or {})
        if json is not None:
            body = _json_module.dumps(json).encode()
            extra["Content-Type"] = "application/json"
        target = path + ("?" + urlencode(params) if params else "")
        attempt = 0
        patience = time.monotonic() + RATE_LIMIT_PATIENCE
        while True:
            try:
                response = transport.request(method, target, body, extra, wait=wait)
            except (OSError, http.client.HTTPException) as error:
                # A POST may have taken effect before the connection broke (a commit, a
                # promote): it is sent again only when it cannot have reached the server.
                again = method in _IDEMPOTENT or isinstance(error, ConnectionRefusedError)
                if again and attempt < RETRIES - 1:
                    time.sleep(0.2 * 2**attempt)
                    attempt += 1
                    continue
                variable = "MODEL_REGISTRY_URL" if via is None else ENV_CACHE_URL
                raise StorageError(
                    f"cannot reach the {where} {base}: {error}",
                    hint=f"check {variable} and the network",
                ) from None
            if response.status == 429:
                # Waited out for as long as RATE_LIMIT_PATIENCE: a large push or pull of many
                # parts in parallel meets the limit again and again, and must not fail for it.
                pause = retry_after(response.headers.get("retry-after"))
                if time.monotonic() + pause < patience:
                    time.sleep(pause)
                    continue
            if response.status >= 400:
                raise self._error(response)
            return response

    def _error(self, response: Response) -> RegistryError:
        try:
            body = response.json()["error"]
            cls = ERRORS.get(body["code"], RegistryError)
            message, hint = body["message"], body.get("hint") or None
        except (ValueError, KeyError, TypeError):
            cls, message, hint = RegistryError, f"HTTP {response.status}", None
        if cls is errors.RateLimitedError:
            return errors.RateLimitedError(message, retry_after=1.0, hint=hint)
        return cls(message, hint=hint)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- queries ------------------------------------------------------------------------------

    def models(self) -> list[ModelRecord]:
        """Every model the token may read: the server's pages, walked to the last."""
        found: list[ModelRecord] = []
        params: dict[str, str] = {"limit": str(LIST_PAGE)}
        while True:
            page = wire.load(wire.ModelList, self._json("GET", "/v1/models", params=params))
            found.extend(m.to_record() for m in page.models)
            if page.next is None or not page.models:  # an empty page ends it, whatever it says
                return found
            params["after"] = page.next

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]:
        """Every live version of `name` (with `expired`, tombstones too), oldest first: the
        server's pages, walked to the last."""
        found: list[VersionRecord] = []
        params = {"model": name, "expired": str(expired).lower(), "limit": str(LIST_PAGE)}
        while True:
            page = wire.load(wire.VersionList, self._json("GET", "/v1/versions", params=params))
            found.extend(v.to_record() for v in page.versions)
            if page.next is None or not page.versions:
                return found
            params["after"] = str(page.next)

    def show(self, ref: str) -> VersionDetails:
        data = self._json("GET", "/v1/version", params={"ref": ref})
        return wire.load(wire.VersionDetails, data).to_report()

    def resolve(self, ref: str) -> VersionRecord:
        return self.show(ref).version

    def verify(
        self, ref: str, *, read_data: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        data = self._json("POST", "/v1/verify", json={"ref": ref, "read_data": read_data})
        return wire.load(wire.VerifyReport, data).to_report()

    # -- push ---------------------------------------------------------------------------------

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
        """Push through an upload session, resuming the one an interrupted push left; the
        provenance and the OpenSSF signature go with the commit (the server checks both)."""
        if write_quorum is not None:
            raise InvalidInputError("--write-quorum is the server's setting through the API")
        progress = progress or NoProgress()
        files, described, signature = upload.described_files(
            Path(path), follow_symlinks=follow_symlinks, signature=signature, progress=progress
        )
        state_file = upload.resume_file([self.url, self._token_tag, name, message, described])
        session = upload.open_session(self._json, state_file, name, described, message)
        sent = upload.send_parts(
            self._call, session, {entry.path: entry.source for entry in files}, progress=progress
        )
        result = self._json(
            "POST",
            f"/v1/uploads/{session.id}/commit",
            json=_commit_body(provenance, signature),
            wait=True,
        )
        state_file.unlink(missing_ok=True)
        self.last_push_sent = sent
        return wire.load(wire.PushResult, result).to_report()

    # -- pull ---------------------------------------------------------------------------------

    def data_keys(self, ref: str) -> dict[tuple[str, str], bytes]:
        """The key broker's answer for a version: (purpose, digest) -> data key (audited). The
        object ids it names are kept: reads through a cache address them."""
        answer = wire.load(wire.DataKeys, self._json("POST", "/v1/keys", json={"ref": ref}))
        for (purpose, digest), found in answer.to_objects().items():
            if purpose == "blob":
                self._objects[digest] = found
        return answer.to_keys()

    def read_ciphertext(
        self, ref: str, path: str, offset: int, length: int, *, digest: str | None = None
    ) -> bytes:
        """Sealed bytes [offset, offset + length) of a version's file (fewer at its end). With
        a cache (`cache_url`) and the file's `digest`, whose object id the key broker named,
        they are read from the cache at the object's URL; the caller decrypts and verifies
        them either way, so a cache can withhold bytes but never change them unnoticed."""
        span = {"Range": f"bytes={offset}-{offset + length - 1}"}
        found = None if digest is None or self._cache is None else self._objects.get(digest)
        if found is not None:
            object_id, size = found
            if offset >= size:
                return b""
            answer = self._call("GET", f"/v1/objects/{object_id}", headers=span, via=self._cache)
            if answer.status != 206:
                raise IntegrityError(
                    f"{ref}: {path}: the cache answered HTTP {answer.status} to a range",
                    hint=f"check the cache at {ENV_CACHE_URL} passes Range requests on",
                )
            return answer.content
        response = self._call("GET", "/v1/blob", params={"ref": ref, "path": path}, headers=span)
        return response.content

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
        """A pull as a local one writes it (`materialize.pull_files`: idempotent, resumable,
        `include`/`exclude`), from the verified manifest, the key broker's keys and ranged
        ciphertext."""
        details = self.show(ref)
        version, manifest = details.version, details.manifest
        select_files(manifest, include=include, exclude=exclude)  # refused before keys are asked
        keys = self.data_keys(version.ref)
        open_file = self._opener(version, keys)
        pulled = pull_files(
            destination,
            manifest,
            lambda _files: contextlib.nullcontext(open_file),
            force=force,
            include=include,
            exclude=exclude,
            progress=progress or NoProgress(),
        )
        return PullResult(
            version,
            Path(destination).expanduser().absolute(),
            pulled.written,
            pulled.bytes,
            (),
            pulled.unchanged,
        )

    def _opener(self, version: VersionRecord, keys: dict[tuple[str, str], bytes]) -> FileOpener:
        """Files of `version` decrypted and verified from ranged ciphertext through the API."""

        def open_file(entry: ManifestFile, on_chunk: Any) -> Iterator[memoryview]:
            def read_range(offset: int, length: int) -> bytes:
                return self.read_ciphertext(
                    version.ref, entry.path, offset, length, digest=entry.digest
                )

            key = keys.get(("blob", entry.digest))
            if key is None:
                raise IntegrityError(
                    f"{version.ref}: the key broker sent no key for {entry.path}",
                    hint="the server's answer is incomplete; ask its operator",
                )
            return sealed.unseal(
                read_range,
                key,
                entry.digest,
                on_chunk=on_chunk,
                expected_size=entry.size,
                workers=PARALLEL,
                chunks_per_read=max(1, RANGE // sealed.DEFAULT_CHUNK_SIZE),
                what=entry.path,
            )

        return open_file

    def prepare(
        self,
        ref: str,
        destination: str | Path,
        *,
        include: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> PrepareResult:
        """A prepared folder (`registry.prepared`) from the server: the manifest it verified
        (its digest checked again here), keys from its key broker, ranged ciphertext."""
        details = self.show(ref)
        version, manifest = details.version, details.manifest
        select(manifest, include)  # a bad pattern is refused before the key broker is asked
        keys = self.data_keys(version.ref)
        try:
            return prepare_folder(
                destination,
                version,
                manifest,
                self._opener(version, keys),
                requested=ref,
                include=include,
                progress=progress or NoProgress(),
            )
        except OSError as error:
            raise storage_error(error, Path(destination)) from None

    # -- aliases, lifecycle, audit -------------------------------------------------------------

    def _change(self, data: Any) -> AliasChange:
        return wire.load(wire.AliasChange, data).to_report()

    def promote(self, ref: str, alias: str, *, reason: str = "") -> AliasChange:
        body = {"ref": ref, "alias": alias, "reason": reason}
        return self._change(self._json("POST", "/v1/aliases/promote", json=body))

    def rollback(
        self, name: str, alias: str, *, to: str | None = None, reason: str = ""
    ) -> AliasChange:
        body = {"model": name, "alias": alias, "to": to, "reason": reason}
        return self._change(self._json("POST", "/v1/aliases/rollback", json=body))

    def protect_alias(self, name: str, alias: str, *, protected: bool = True) -> AliasRecord:
        body = {"model": name, "alias": alias, "protected": protected}
        data = self._json("POST", "/v1/aliases/protect", json=body)
        return wire.load(wire.Alias, data).to_record()

    def aliases(self, name: str) -> list[AliasRecord]:
        data = self._json("GET", "/v1/aliases", params={"model": name})
        return [a.to_record() for a in wire.load_list(wire.Alias, data)]

    def history(
        self, name: str, alias: str | None = None, *, at: datetime | None = None
    ) -> list[AliasMoveRecord]:
        params: dict[str, str] = {"model": name}
        if alias is not None:
            params["alias"] = alias
        if at is not None:
            params["at"] = at.isoformat()
        data = self._json("GET", "/v1/history", params=params)
        return [m.to_record() for m in wire.load_list(wire.AliasMove, data)]

    def openssf_public_key(self) -> OpenSSFKey:
        """The public key of the server's OpenSSF signer."""
        return wire.load(wire.OpenSSFKey, self._json("GET", "/v1/openssf/public-key")).to_report()

    def openssf_signature(self, ref: str) -> bytes:
        """`model.sig` for a version, signed by the server's OpenSSF key."""
        return self._call("GET", "/v1/openssf/signature", params={"ref": ref}).content

    def set_signer_policy(
        self, name: str, signers: Sequence[str], *, alias: str | None = None
    ) -> dict[str, tuple[str, ...]]:
        _not_offered("policy set", "policy set")

    def clear_signer_policy(self, name: str, *, alias: str | None = None) -> None:
        _not_offered("policy clear", "policy clear")

    def signer_policies(self, name: str) -> dict[str, tuple[str, ...]]:
        _not_offered("policy show", "policy show")

    def set_retention(
        self,
        name: str | None,
        *,
        keep_last: int | None = None,
        keep_within: str | None = None,
        keep_demoted_for: str | None = None,
        clear: bool = False,
    ) -> Policy:
        body = {
            "model": name,
            "keep_last": keep_last,
            "keep_within": keep_within,
            "keep_demoted_for": keep_demoted_for,
            "clear": clear,
        }
        return wire.load(
            wire.ModelPolicy, self._json("PUT", "/v1/retention", json=body)
        ).to_policy()

    def retention(self, name: str) -> tuple[Policy, str]:
        data = wire.load(wire.Retention, self._json("GET", "/v1/retention", params={"model": name}))
        return data.to_policy(), data.source

    def plan_retention(self, name: str | None = None) -> list[tuple[str, Policy, list[Decision]]]:
        names = [name] if name is not None else [m.name for m in self.models()]
        return [
            wire.load(
                wire.RetentionPlan, self._json("GET", "/v1/retention/plan", params={"model": model})
            ).to_plan()
            for model in names
        ]

    def hold(self, ref: str, *, reason: str) -> HoldResult:
        data = self._json("POST", "/v1/holds", json={"ref": ref, "reason": reason})
        return wire.load(wire.HoldResult, data).to_report()

    def release_hold(self, ref: str, *, reason: str) -> HoldResult:
        data = self._json("POST", "/v1/holds/release", json={"ref": ref, "reason": reason})
        return wire.load(wire.HoldResult, data).to_report()

    def holds(self) -> list[HoldRecord]:
        return [h.to_record() for h in wire.load_list(wire.Hold, self._json("GET", "/v1/holds"))]

    def gc(self, *, dry_run: bool = False, grace: str = "24h") -> GcReport:
        data = self._json("POST", "/v1/gc", json={"dry_run": dry_run, "grace": grace})
        report = wire.load(wire.GcReport, data)
        return report.to_report([self._tombstone(ref) for ref in report.expired])

    def _tombstone(self, ref: str) -> VersionRecord:
        name, _, number = ref.rpartition("@")
        for version in self.versions(name, expired=True):
            if str(version.number) == number:
                return version
        raise errors.NotFoundError(f"{ref} is not listed by the server")

    def delete(self, ref: str, *, reason: str, dry_run: bool = False) -> VersionRecord:
        body = {"ref": ref, "reason": reason, "dry_run": dry_run}
        data = self._json("POST", "/v1/delete", json=body)
        return wire.load(wire.Version, data).to_record()

    def audit_events(
        self, *, subject: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        params: dict[str, str] = {"limit": str(limit)}
        if subject is not None:
            params["model"] = subject
        if since is not None:
            params["since"] = since.isoformat()
        data = self._json("GET", "/v1/audit", params=params)
        return [e.to_record() for e in wire.load_list(wire.AuditEntry, data)]

    def verify_audit(self) -> AuditVerification:
        data = self._json("GET", "/v1/audit/verify")
        return wire.load(wire.AuditVerification, data).to_record()

    # -- tags, search, diff, small files --------------------------------------------------------

    def add_tag(self, ref: str, tag: str) -> TagChange:
        data = self._json("POST", "/v1/tags", json={"ref": ref, "tag": tag})
        return wire.load(wire.TagChange, data).to_report()

    def remove_tag(self, ref: str, tag: str) -> TagChange:
        data = self._json("POST", "/v1/tags/remove", json={"ref": ref, "tag": tag})
        return wire.load(wire.TagChange, data).to_report()

    def tags(self, ref: str) -> list[TagRecord]:
        data = self._json("GET", "/v1/tags", params={"ref": ref})
        return [t.to_record() for t in wire.load_list(wire.Tag, data)]

    def tagged(
        self, tag: str, *, name: str | None = None, expired: bool = False
    ) -> list[VersionRecord]:
        params = {"tag": tag, "expired": str(expired).lower()}
        if name is not None:
            params["model"] = name
        data = self._json("GET", "/v1/tagged", params=params)
        return [v.to_record() for v in wire.load_list(wire.Version, data)]

    def search(self, query: str, *, model: str | None = None, limit: int = 50) -> SearchResult:
        params = {"q": query, "limit": str(limit)}
        if model is not None:
            params["model"] = model
        data = self._json("GET", "/v1/search", params=params)
        return wire.load(wire.SearchResult, data).to_report()

    def diff(self, a: str, b: str) -> VersionDiff:
        """The server's diff of the files, tensors and metadata; the config.json of each
        version compared here, decrypted as a pull decrypts (the server never sends a file's
        plaintext)."""
        data = self._json("GET", "/v1/diff", params={"a": a, "b": b})
        found = wire.load(wire.VersionDiff, data).to_report()
        configs = [self._config(version) for version in (found.a, found.b)]
        return dataclasses.replace(
            found,
            config_changes=config_changes(configs[0] or {}, configs[1] or {}),
            config_compared=True,
        )

    def _config(self, version: VersionRecord) -> dict[str, Any] | None:
        """A version's config.json as a JSON object (None: none, too large, not an object)."""
        entry = next((f for f in version.files if f.path == CONFIG), None)
        if entry is None or entry.size > MAX_SMALL_FILE:
            return None
        return config_object(self.read_small_file(version.ref, CONFIG))

    def read_small_file(self, ref: str, path: str) -> bytes:
        """One of a version's small files (a model card, a config): its ciphertext and key
        from the server, decrypted and verified here, in memory, as a pull does."""
        details = self.show(ref)
        version = details.version
        entry = next((f for f in details.manifest.files if f.path == path), None)
        if entry is None:
            raise errors.NotFoundError(f"{version.ref} has no file {path}")
        if entry.size > MAX_SMALL_FILE:
            raise InvalidInputError(f"{path} is {entry.size} bytes: too large to show")
        opened = self._opener(version, self.data_keys(version.ref))
        chunks = opened(entry, lambda _offset, _chunk: None)
        return b"".join(bytes(chunk) for chunk in chunks)

    # -- not offered by the REST API: these run on the server's host ----------------------------

    def scrub(
        self,
        *,
        read_data: bool = False,
        sample: float | None = None,
        region: str | None = None,
        progress: Progress | None = None,
    ) -> ScrubReport:
        _not_offered("scrub", "verify --all")

    def drill(
        self,
        *,
        region: str | None = None,
        alias: str = "production",
        sample: int | None = None,
        progress: Progress | None = None,
    ) -> DrillReport:
        _not_offered("drill", "drill")

    def regions_status(self) -> list[RegionStatus]:
        _not_offered("regions status", "regions status")

    def replicate(
        self, *, repair: bool = False, progress: Progress | None = None
    ) -> ReplicateReport:
        _not_offered("replicate", "replicate")

    def journal_status(self, *, check: bool = True) -> list[wire.RegionJournalLike]:
        _not_offered("journal status", "catalog journal")

    def drain_journal(self) -> list[wire.RegionJournalLike]:
        _not_offered("drain journal", "catalog journal")

    def new_journal_epoch(self) -> str:
        _not_offered("new journal epoch", "catalog journal --new-epoch")

    def stored_journals(self) -> list[wire.StoredJournalLike]:
        _not_offered("stored journals", "catalog journal --stores")

    def add_webhook(self, url: str) -> Webhook:
        _not_offered("add webhook", "events add-webhook")

    def deliveries(self, *, pending_only: bool = False, limit: int = 100) -> list[DeliveryRecord]:
        _not_offered("deliveries", "events ls")

    def deliver_events(self, *, attempts: int = 3, backoff: float = 0.5) -> list[str]:
        _not_offered("deliver events", "events deliver")

    def key_report(self) -> KeysReport:
        _not_offered("key report", "keys show")

    def trust_signer(self, name: str, public_key: str) -> TrustedSignerLike:
        _not_offered("trust signer", "keys trust")

    def untrust_signer(self, name: str) -> None:
        _not_offered("untrust signer", "keys untrust")

    def new_signing_key(self) -> str:
        _not_offered("new signing key", "keys new-signing-key")

    def rotate_keys(
        self, to: str, *, region: str | None = None, progress: Progress | None = None
    ) -> RotationReport:
        _not_offered("rotate keys", "keys rotate")


__all__ = ["NotOfferedError", "RemoteRegistry"]


def _commit_body(provenance: ProvenanceRequest | None, signature: bytes | None) -> dict[str, Any]:
    """The upload commit's body: what `push` states of the version's provenance, and the
    OpenSSF signature in base64 (registry.api.routes.uploads.CommitRequest)."""
    body: dict[str, Any] = {}
    if provenance is not None:
        if provenance.meta:
            body["meta"] = dict(provenance.meta)
        for key in ("source_repo", "source_commit", "run_url", "base_model"):
            if getattr(provenance, key) is not None:
                body[key] = getattr(provenance, key)
        if provenance.datasets:
            body["datasets"] = [f"{d.name}@{d.digest}" for d in provenance.datasets]
    if signature is not None:
        body["signature"] = base64.b64encode(signature).decode()
    return body
