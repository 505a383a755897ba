"""The second half of the facade: reading a page at a time (models, a model's overview, a
version's row, the audit trail, small files, diffs), tags, search, the web UI's sessions,
provenance (signer policies, OpenSSF signatures), upload sessions (a push sealed by the
client, through the REST API), the limit counts a server fleet shares, and stored objects by
id (object URLs). `Registry` is made of this and `registry.service`; each method is a
one-line delegation to its operation, exactly as there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry.ops.context import Context
    from registry.provenance import ProvenanceRequest
    from registry.records import (
        CountCell,
        CountSpan,
        DeclaredFile,
        ModelSummary,
        TagRecord,
        TokenRecord,
        UiSessionRecord,
        VersionRecord,
    )
    from registry.reports import (
        AuditPage,
        ModelList,
        ModelOverview,
        ModelPage,
        OpenSSFKey,
        PushResult,
        SealedObject,
        SearchResult,
        TagChange,
        UploadKeys,
        VersionDiff,
        VersionList,
        VersionRow,
    )


class Browsing:
    """The browsing and session methods of `Registry` (see `registry.service`)."""

    _context: Context

    def model_page(
        self,
        *,
        query: str = "",
        patterns: Sequence[str] = ("*",),
        number: int = 1,
        size: int = 50,
    ) -> ModelPage:
        """Page `number` of the models whose name contains `query`, among those a token with
        model `patterns` may see, by name, each with its newest version, aliases, stored size
        and last change."""
        from registry.ops import browse as browse_ops

        return browse_ops.model_page(
            self._context, query=query, patterns=patterns, number=number, size=size
        )

    def model_list(
        self, *, after: str | None = None, limit: int = 100, patterns: Sequence[str] = ("*",)
    ) -> ModelList:
        """Up to `limit` models named after `after`, by name, among those a token with model
        `patterns` may see, and the name the next page starts after (the REST API's list)."""
        from registry.ops import browse as browse_ops

        return browse_ops.model_list(self._context, after=after, limit=limit, patterns=patterns)

    def version_list(
        self, name: str, *, after: int = 0, limit: int = 100, expired: bool = False
    ) -> VersionList:
        """Up to `limit` of a model's versions numbered after `after`, oldest first, and the
        number the next page starts after (the REST API's list)."""
        from registry.ops import browse as browse_ops

        return browse_ops.version_list(
            self._context, name, after=after, limit=limit, expired=expired
        )

    def model_summary(self, name: str) -> ModelSummary:
        """One model's newest version, aliases, stored size and last change."""
        from registry.ops import browse as browse_ops

        return browse_ops.model_summary(self._context, name)

    def model_overview(
        self, name: str, *, number: int = 1, size: int = 50, expired: bool = False
    ) -> ModelOverview:
        """A model's page: a page of its versions, newest first, with their aliases, holds,
        copies per region and retention decisions; its aliases' newest moves; its policy."""
        from registry.ops import browse as browse_ops

        return browse_ops.model_overview(
            self._context, name, number=number, size=size, expired=expired
        )

    def version_row(self, ref: str) -> VersionRow:
        """One version with its aliases, hold, copies per region and retention decision."""
        from registry.ops import browse as browse_ops

        return browse_ops.version_row(self._context, ref)

    def audit_page(
        self,
        *,
        subjects: Sequence[str] | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        version: int | None = None,
        before: int | None = None,
        size: int = 50,
    ) -> AuditPage:
        """A page of the audit trail, newest first, filtered (see `ops.browse.audit_page`)."""
        from registry.ops import browse as browse_ops

        return browse_ops.audit_page(
            self._context,
            subjects=subjects,
            actor=actor,
            action=action,
            since=since,
            until=until,
            version=version,
            before=before,
            size=size,
        )

    def read_small_file(self, ref: str, path: str) -> bytes:
        """One of a version's small files (a config, a model card), decrypted and verified in
        memory."""
        from registry.ops import browse as browse_ops

        return browse_ops.read_small_file(self._context, ref, path)

    def diff(self, a: str, b: str, *, config: bool = True) -> VersionDiff:
        """What changed from version `a` to version `b`: files reused and new bytes, tensors
        added, removed and changed, config.json keys (unless not `config`) and metadata
        changed."""
        from registry.ops import diff as diff_ops

        return diff_ops.diff(self._context, a, b, config=config)

    def add_tag(self, ref: str, tag: str) -> TagChange:
        """Tag a version (promoter; audited); a tag it has already changes nothing."""
        from registry.ops import tags as tags_ops

        return tags_ops.add_tag(self._context, ref, tag)

    def remove_tag(self, ref: str, tag: str) -> TagChange:
        """Remove a version's tag (promoter; audited); NotFoundError when it has none such."""
        from registry.ops import tags as tags_ops

        return tags_ops.remove_tag(self._context, ref, tag)

    def tags(self, ref: str) -> list[TagRecord]:
        """A version's tags, with who added each and when."""
        from registry.ops import tags as tags_ops

        return tags_ops.tags(self._context, ref)

    def tagged(
        self, tag: str, *, name: str | None = None, expired: bool = False
    ) -> list[VersionRecord]:
        """The versions tagged `tag` (of model `name`), by model and number."""
        from registry.ops import tags as tags_ops

        return tags_ops.tagged(self._context, tag, name=name, expired=expired)

    def search(
        self,
        query: str,
        *,
        model: str | None = None,
        patterns: Sequence[str] = ("*",),
        limit: int = 50,
    ) -> SearchResult:
        """The newest live versions whose model name, tags, metadata or message match `query`
        (`KEY=VALUE`: metadata exactly), among the models `patterns` (and `model`) name."""
        from registry.ops import search as search_ops

        return search_ops.search(self._context, query, model=model, patterns=patterns, limit=limit)

    def open_ui_session(self, token_text: str) -> tuple[str, UiSessionRecord, TokenRecord]:
        """Sign in to the web UI with an API token: the session id for the cookie, the
        session, the token."""
        from registry.ops import uisessions as uisessions_ops

        return uisessions_ops.open_ui_session(self._context, token_text)

    def ui_session(self, session_id: str) -> tuple[UiSessionRecord, TokenRecord]:
        """The live web UI session `session_id` names and its token (UnauthenticatedError)."""
        from registry.ops import uisessions as uisessions_ops

        return uisessions_ops.ui_session(self._context, session_id)

    def close_ui_session(self, session_id: str) -> None:
        from registry.ops import uisessions as uisessions_ops

        return uisessions_ops.close_ui_session(self._context, session_id)

    def set_signer_policy(
        self, name: str, signers: Sequence[str], *, alias: str | None = None
    ) -> dict[str, tuple[str, ...]]:
        """Require an OpenSSF signature by one of `signers` of every version `alias` (None:
        any alias) of `name` points at from now on (admin, audited)."""
        from registry.ops import policies as policies_ops

        return policies_ops.set_signer_policy(self._context, name, signers, alias=alias)

    def clear_signer_policy(self, name: str, *, alias: str | None = None) -> None:
        from registry.ops import policies as policies_ops

        return policies_ops.clear_signer_policy(self._context, name, alias=alias)

    def signer_policies(self, name: str) -> dict[str, tuple[str, ...]]:
        """alias ("*": every alias) -> the signers one of which must have signed."""
        from registry.ops import policies as policies_ops

        return policies_ops.signer_policies(self._context, name)

    def openssf_public_key(self) -> OpenSSFKey:
        """The PEM public key verifiers of this registry's OpenSSF signatures need."""
        from registry.ops import signatures as signatures_ops

        return signatures_ops.openssf_public_key(self._context)

    def openssf_signature(self, ref: str) -> bytes:
        """`model.sig` for a version: an OpenSSF model signature of its files (their recorded
        SHA-256 digests) by this registry's OpenSSF key; audited."""
        from registry.ops import signatures as signatures_ops

        return signatures_ops.openssf_signature(self._context, ref)

    def exchange_counts(
        self, deltas: Mapping[CountCell, int], wanted: Mapping[str, CountSpan]
    ) -> dict[CountCell, int]:
        """A server process's limit counts since its last swap added to the fleet's (`[api]
        shared_state`), and the fleet's counts of the `wanted` keys back."""
        from registry.ops import sharedlimits as sharedlimits_ops

        return sharedlimits_ops.exchange_counts(self._context, deltas, wanted)

    def claim_signal(self, kind: str, key: str, *, now: float, window: float) -> bool:
        """Whether this server process raises threat signal `kind` for `key`: the first of
        the fleet to claim it in a `window` does, no other."""
        from registry.ops import sharedlimits as sharedlimits_ops

        return sharedlimits_ops.claim_signal(self._context, kind, key, now=now, window=window)

    def open_upload(
        self, model: str, files: Sequence[DeclaredFile], *, message: str = ""
    ) -> UploadKeys:
        """Open an upload session for a new version of `model`: the data key and sealed
        header of each file, for the client to seal it with (audited)."""
        from registry.ops import uploads as upload_ops

        return upload_ops.open_upload(self._context, model, files, message=message)

    def upload_keys(self, session_id: str) -> UploadKeys:
        """An upload session of this actor's, what it received, and its keys again (audited)."""
        from registry.ops import uploads as upload_ops

        return upload_ops.upload_keys(self._context, session_id)

    def upload_part_length(self, session_id: str, index: int, part: int) -> int:
        from registry.ops import uploads as upload_ops

        return upload_ops.upload_part_length(self._context, session_id, index, part)

    def put_upload_part(
        self, session_id: str, index: int, part: int, data: bytes | bytearray, digest: str
    ) -> None:
        """Keep one part of a file's sealed bytes (`digest`: their BLAKE3 digest); the file is
        checked once its last part arrived."""
        from registry.ops import uploadparts as parts_ops

        return parts_ops.put_upload_part(self._context, session_id, index, part, data, digest)

    def abandon_upload(self, session_id: str) -> None:
        from registry.ops import uploads as upload_ops

        return upload_ops.abandon_upload(self._context, session_id)

    def commit_upload(
        self,
        session_id: str,
        *,
        provenance: ProvenanceRequest | None = None,
        signature: bytes | None = None,
    ) -> PushResult:
        """Check every file of an upload session (decrypted in memory, never written as
        plaintext) and commit them as a new version."""
        from registry.ops import uploadcommit as commit_ops

        return commit_ops.commit_upload(
            self._context, session_id, provenance=provenance, signature=signature
        )

    def stored_object(self, object_id: str, *, models: Sequence[str] = ("*",)) -> SealedObject:
        """The stored object an object URL names (`/v1/objects/{id}`), for a caller that may
        read a model (matching one of `models`) referencing it; read it with `read_sealed`."""
        from registry.ops import objects as objects_ops

        return objects_ops.stored_object(self._context, object_id, models=models)
