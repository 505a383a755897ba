"""The Litestar application: routes under /v1, token authentication and role guards, one error
shape, health, readiness, metrics and the OpenAPI schema.

Every route names the role it needs; a token is checked (401 when missing, malformed, unknown,
expired or revoked), then its role and its model patterns (403), before anything is looked up,
so neither answer tells whether a model exists. Handlers are synchronous and run in worker
threads: `Registry` does blocking I/O. The app is stateless but for rate-limit counters and the
upload staging directory (docs/operations.md: several processes share it or use sticky routing).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, InternalServerException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import __version__
from registry.api.limits import RateLimiter, Watch
from registry.api.metrics import Metrics
from registry.api.uploads import Session, UploadFile, Uploads
from registry.blobstore import BLOB, MANIFEST
from registry.config import MAX_UPLOAD_PART
from registry.errors import (
    DigestMismatchError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RegistryError,
    UnauthenticatedError,
)
from registry.records import AliasMoveRecord, AliasRecord, HoldRecord, TokenRecord, VersionRecord
from registry.refs import parse_reference, validate_name
from registry.replication import ReadReport
from registry.retention import Policy, format_duration
from registry.service import ADMIN, PROMOTER, PUSHER, READER, ROLES, Registry

security_log = logging.getLogger("model_registry.security")
MAX_RANGE = 64 * 1024 * 1024
JSON_LIMIT = 1024 * 1024


# -- request and response bodies ---------------------------------------------------------------


@dataclass
class FileSpec:
    path: str
    size: int
    digest: str


@dataclass
class UploadRequest:
    model: str
    files: list[FileSpec]
    message: str = ""


@dataclass
class PromoteRequest:
    ref: str
    alias: str
    reason: str = ""


@dataclass
class RollbackRequest:
    model: str
    alias: str
    to: str | None = None
    reason: str = ""


@dataclass
class RetentionRequest:
    model: str | None = None
    keep_last: int | None = None
    keep_within: str | None = None
    keep_demoted_for: str | None = None
    clear: bool = False


@dataclass
class HoldRequest:
    ref: str
    reason: str


@dataclass
class GcRequest:
    dry_run: bool = True
    grace: str = "24h"


@dataclass
class DeleteRequest:
    ref: str
    reason: str


@dataclass
class KeysRequest:
    ref: str


@dataclass
class State:
    registry: Registry
    uploads: Uploads
    metrics: Metrics
    limiter: RateLimiter
    transfer_limiter: RateLimiter
    broker_limiter: RateLimiter
    watch: Watch


# -- helpers ------------------------------------------------------------------------------------


def _state(request: Request[Any, Any, Any]) -> State:
    state: State = request.app.state["registry_state"]
    return state


def _client(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


def _enter(
    request: Request[Any, Any, Any],
    role: str,
    *,
    model: str | None = None,
    ref: str | None = None,
    everything: bool = False,
    transfer: bool = False,
) -> tuple[Registry, TokenRecord]:
    """Authenticate the request's token, rate-limit it, check its role and model scope, and
    return the registry as that token sees it. `transfer` requests (ciphertext ranges, upload
    parts) count against their own, larger bucket: a pull of a large model is thousands of
    them, and limiting those like API calls would cap a fleet's throughput."""
    state = _state(request)
    header = request.headers.get("authorization", "")
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer" or not text:
        raise UnauthenticatedError(
            "an API token is needed: Authorization: Bearer <token>",
            hint="create one with `model-registry token create` (admin)",
        )
    token = state.registry.authenticate(text)
    (state.transfer_limiter if transfer else state.limiter).check(token.id)
    if ROLES.index(token.role) < ROLES.index(role):
        raise PermissionDeniedError(
            f"the {token.role} role may not do this", hint=f"it needs the {role} role"
        )
    # The reference is parsed only now: an unauthenticated caller learns nothing, not even
    # whether its reference was well formed.
    for name in (model, None if ref is None else _model_of(ref)):
        if name is not None:
            _check_scope(token, name)
    if everything and "*" not in token.models:
        raise PermissionDeniedError(
            "this acts on every model: it needs a token for all of them",
            hint="a token created with --models '*'",
        )
    return state.registry.acting_as(token), token


def _check_scope(token: TokenRecord, model: str) -> None:
    validate_name(model)
    if not any(fnmatch.fnmatchcase(model, pattern) for pattern in token.models):
        raise PermissionDeniedError(
            "this token may not act on that model", hint="its --models patterns do not match"
        )


def _model_of(ref: str) -> str:
    return parse_reference(ref).name


def _version(v: VersionRecord) -> dict[str, Any]:
    return {
        "ref": v.ref,
        "name": v.name,
        "number": v.number,
        "digest": v.digest,
        "message": v.message,
        "created_at": v.created_at.isoformat(),
        "created_by": v.created_by,
        "signed_by": v.signed_by,
        "file_count": v.file_count,
        "files": [
            {"path": f.path, "size": f.size, "digest": f.digest, "tensors": f.tensor_count}
            for f in v.files
        ],
        "size": v.total_size,
        "tensors": v.tensor_count,
        "parameters": v.parameter_count,
        "dtypes": list(v.dtypes),
        "expired_at": None if v.expired_at is None else v.expired_at.isoformat(),
        "expired_by": v.expired_by,
        "expiry_reason": v.expiry_reason,
    }


def _alias(a: AliasRecord) -> dict[str, Any]:
    return {
        "model": a.name,
        "alias": a.alias,
        "version": a.number,
        "digest": a.digest,
        "protected": a.protected,
        "updated_at": a.updated_at.isoformat(),
        "updated_by": a.updated_by,
    }


def _hold(h: HoldRecord) -> dict[str, Any]:
    return {
        "model": h.name,
        "version": h.number,
        "ref": h.ref,
        "digest": h.digest,
        "reason": h.reason,
        "placed_by": h.placed_by,
        "placed_at": h.placed_at.isoformat(),
    }


def _move(m: AliasMoveRecord) -> dict[str, Any]:
    return {
        "model": m.name,
        "alias": m.alias,
        "kind": m.kind,
        "version": m.number,
        "previous": m.previous,
        "moved_at": m.moved_at.isoformat(),
        "moved_by": m.moved_by,
        "reason": m.reason,
    }


def _policy(policy: Policy) -> dict[str, Any]:
    def duration(value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    return {
        "keep_last": policy.keep_last,
        "keep_within": duration(policy.keep_within),
        "keep_demoted_for": duration(policy.keep_demoted_for),
        "policy": policy.describe(),
    }


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"invalid time {text!r}", hint="ISO 8601 with a zone") from None
    if moment.tzinfo is None:
        raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    return moment


def _range(header: str | None, size: int) -> tuple[int, int]:
    """(offset, length) of a `bytes=A-B` range within an object of `size` bytes."""
    if header is None:
        raise InvalidInputError("a Range header is needed: bytes=START-END")
    unit, _, spec = header.partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or not first.isdigit() or not last.isdigit():
        raise InvalidInputError(f"unsupported range {header!r}", hint="bytes=START-END")
    start, end = int(first), int(last)
    if start > end or start >= size:
        raise InvalidInputError(f"range {header!r} is outside the object ({size} bytes)")
    end = min(end, size - 1)
    if end - start + 1 > MAX_RANGE:
        raise InvalidInputError(f"a range is at most {MAX_RANGE} bytes")
    return start, end - start + 1


# -- health, readiness, metrics -----------------------------------------------------------------


@get("/healthz", sync_to_thread=False, tags=["service"])
def healthz() -> dict[str, str]:
    """Alive."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=True, tags=["service"])
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Ready: the catalog answers and every region is reachable."""
    state = _state(request)
    problems: list[str] = []
    try:
        state.registry.models()
    except RegistryError as error:
        problems.append(f"catalog: {error}")
    try:
        for region in state.registry.regions_status():
            state.metrics.replication_backlog.labels(region.name).set(region.pending + region.bad)
            if not region.reachable:
                problems.append(f"region {region.name}: {region.detail}")
    except RegistryError as error:
        problems.append(f"regions: {error}")
    body = {"status": "ready" if not problems else "not ready", "problems": problems}
    return Response(body, status_code=200 if not problems else 503)


@get("/metrics", sync_to_thread=True, tags=["service"], media_type=CONTENT_TYPE_LATEST)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics (with when the backups were last proven: drills and scrubs)."""
    state = _state(request)
    with contextlib.suppress(RegistryError):  # the catalog down: the rest still answers
        _proofs(state)
    data = generate_latest(state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


def _proofs(state: State) -> None:
    """The last drill from each configured region and the last full scrub, from the audit trail
    (any process or host may have run them); series appear once there is something to say."""
    catalog = state.registry.catalog
    regions = {region.name for region in state.registry.replicas.regions}
    seen: set[str] = set()
    for event in catalog.audit_events(action="drill", subject="registry", limit=200):
        region = str(event.details.get("region"))
        if region in regions and region not in seen:
            seen.add(region)
            state.metrics.last_drill.labels(region).set(event.at.timestamp())
            state.metrics.last_drill_ok.labels(region).set(1 if event.details.get("ok") else 0)
            state.metrics.last_drill_seconds.labels(region).set(
                float(event.details.get("seconds", 0.0))
            )
        if seen == regions:
            break
    for journal in state.registry.journal_status(check=False):
        state.metrics.journal_behind.labels(journal.region).set(journal.behind)
        state.metrics.journal_lag.labels(journal.region).set(journal.lag_seconds)
    for event in catalog.audit_events(action="scrub", subject="registry", limit=200):
        details = event.details
        if details.get("sample") is None and len(details.get("regions", [])) == len(regions):
            # Only a full scrub of every region says something about all the copies.
            state.metrics.last_scrub.labels("full").set(event.at.timestamp())
            state.metrics.last_scrub_problems.labels("full").set(
                float(details.get("problems", 0)) + len(details.get("unchecked", []))
            )
            break


# -- models and versions --------------------------------------------------------------------------


@get("/v1/models", sync_to_thread=True, tags=["models"])
def list_models(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """The models this token may read."""
    view, token = _enter(request, READER)
    return [
        {
            "name": m.name,
            "versions": m.version_count,
            "latest": m.latest,
            "size": m.total_size,
            "created_at": m.created_at.isoformat(),
        }
        for m in view.models()
        if any(fnmatch.fnmatchcase(m.name, p) for p in token.models)
    ]


@get("/v1/versions", sync_to_thread=True, tags=["models"])
def list_versions(
    request: Request[Any, Any, Any], model: FromQuery[str], expired: FromQuery[bool] = False
) -> list[dict[str, Any]]:
    """The versions of a model, oldest first (with `expired`, tombstones too)."""
    view, _token = _enter(request, READER, model=model)
    return [_version(v) for v in view.versions(model, expired=expired)]


@get("/v1/version", sync_to_thread=True, tags=["models"])
def show_version(request: Request[Any, Any, Any], ref: FromQuery[str]) -> dict[str, Any]:
    """One version and its verified manifest (signature and digest checked by the server)."""
    view, token = _enter(request, READER, ref=ref)
    details = view.show(ref)
    _note_read(request, token, details.version.name)
    manifest = details.manifest
    return {**_version(details.version), "signer": details.signer, "manifest": manifest.to_dict()}


@get("/v1/blob", sync_to_thread=True, tags=["models"])
def download(
    request: Request[Any, Any, Any], ref: FromQuery[str], path: FromQuery[str | None] = None
) -> Response[bytes]:
    """A byte range of the sealed ciphertext of one file of a version (or, without `path`, of
    its manifest): `Range: bytes=START-END`. Decrypt with the key broker's data key."""
    view, token = _enter(request, READER, ref=ref, transfer=True)
    version = view.resolve(ref)
    if path is None:
        kind, digest = MANIFEST, version.digest
    else:
        entry = next((f for f in version.files if f.path == path), None)
        if entry is None:
            raise NotFoundError(f"{version.ref} has no file {path!r}")
        kind, digest = BLOB, entry.digest
    size = view.sealed_size(kind, digest)
    offset, length = _range(request.headers.get("range"), size)
    data = view.replicas.read_ciphertext(kind, digest, offset, length, report=ReadReport())
    _state(request).metrics.bytes_out.inc(len(data))
    _note_read(request, token, version.name)
    return Response(
        data,
        status_code=206,
        media_type="application/octet-stream",
        headers={
            "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{size}",
            "X-Model-Registry-Digest": digest,
        },
    )


@dataclass
class VerifyRequest:
    ref: str
    read_data: bool = False


@post("/v1/verify", sync_to_thread=True, tags=["models"], status_code=200)
def verify(request: Request[Any, Any, Any], data: JSONBody[VerifyRequest]) -> dict[str, Any]:
    """Check a version's objects in the stores (with `read_data`: decrypt and re-hash them)."""
    view, _token = _enter(request, READER, ref=data.ref)
    report = view.verify(data.ref, read_data=data.read_data)
    if not report.ok:
        _state(request).metrics.integrity_failures.inc(len(report.problems))
        _security_event(
            request,
            "integrity-failure",
            f"{report.version.ref}: "
            + "; ".join(f"{p.path}: {p.problem}" for p in report.problems),
        )
    return {
        "version": _version(report.version),
        "read_data": report.read_data,
        "checked_files": report.checked_files,
        "checked_bytes": report.checked_bytes,
        "problems": [{"path": p.path, "problem": p.problem} for p in report.problems],
        "unchecked": list(report.unchecked),
    }


@post("/v1/keys", sync_to_thread=True, tags=["keys"], status_code=200)
def key_broker(request: Request[Any, Any, Any], data: JSONBody[KeysRequest]) -> dict[str, Any]:
    """The key broker: the data keys of a version's files and manifest, for a token allowed to
    read the model. Rate-limited per token and audited, so serving nodes never hold the
    key-encryption key or KMS rights."""
    view, token = _enter(request, READER, ref=data.ref)
    state = _state(request)
    state.broker_limiter.check(token.id)
    version = view.resolve(data.ref)
    _note_read(request, token, version.name)
    keys = view.data_keys(version)
    state.metrics.unwraps.labels(token.id).inc(len(keys))
    signal = state.watch.note_unwraps(token.id, len(keys))
    if signal is not None:
        _security_event(request, signal, f"token {token.id} unwrapped {len(keys)} keys")
    view.catalog.audit(
        view.actor,
        "key-broker",
        version.name,
        {"version": version.number, "keys": len(keys), "token": token.id},
    )
    return {
        "ref": version.ref,
        "digest": version.digest,
        "keys": [
            {"purpose": kind, "digest": digest, "key": base64.b64encode(key).decode()}
            for (kind, digest), key in sorted(keys.items())
        ],
    }


# -- uploads ---------------------------------------------------------------------------------------


def _session_json(session: Any) -> dict[str, Any]:
    return {
        "id": session.id,
        "model": session.model,
        "part_size": session.part_size,
        "files": [
            {
                "index": index,
                "path": f.path,
                "size": f.size,
                "digest": f.digest,
                "parts": f.parts(session.part_size),
                "received": session.received(index),
            }
            for index, f in enumerate(session.files)
        ],
    }


@post("/v1/uploads", sync_to_thread=True, tags=["uploads"], status_code=201)
def create_upload(request: Request[Any, Any, Any], data: JSONBody[UploadRequest]) -> dict[str, Any]:
    """Open an upload session for a new version: the files, their sizes and BLAKE3 digests."""
    _view, token = _enter(request, PUSHER, model=data.model)
    if len(data.message) > 65536:
        raise InvalidInputError("the message is longer than 65536 characters")
    files = [UploadFile(f.path, f.size, f.digest) for f in data.files]
    session = _state(request).uploads.create(
        data.model, files, message=data.message, owner=token.id
    )
    return _session_json(session)


@get(
    "/v1/uploads/{session_id:str}",
    sync_to_thread=True,
    tags=["uploads"],
    summary="UploadStatus",
    operation_id="UploadStatus",
)
def upload_status(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    """What a session has received (a client resumes by sending the rest)."""
    _view, token = _enter(request, PUSHER)
    return _session_json(_state(request).uploads.get(session_id, owner=token.id))


@put(
    "/v1/uploads/{session_id:str}/files/{index:int}/parts/{part:int}",
    tags=["uploads"],
    status_code=204,
    request_max_body_size=MAX_UPLOAD_PART + 1024,
)
async def upload_part(
    request: Request[Any, Any, Any],
    session_id: FromPath[str],
    index: FromPath[int],
    part: FromPath[int],
) -> None:
    """One part of one file: the request body is its bytes (`application/octet-stream`),
    `X-Part-Digest: blake3:<hex>` their digest. A body longer than the part is refused (413)
    before it is read."""
    state = _state(request)

    def where() -> tuple[Session, int]:
        _view, token = _enter(request, PUSHER, transfer=True)
        session = state.uploads.get(session_id, owner=token.id)
        return session, state.uploads.part_length(session, index, part)

    # The token, the session and the part are checked before the body is kept in memory.
    try:
        session, expected = await anyio.to_thread.run_sync(where)
    except RegistryError:
        # An HTTP/1.1 client reads the answer once it has sent its body: read it (bounded by
        # the route's limit), discarding it, so that the client sees this answer (a 429 to
        # wait on, a 401) rather than a broken connection.
        async for _chunk in request.stream():
            pass
        raise
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > expected:
        raise HTTPException(
            status_code=413,
            detail=f"part {part} of file {index} has {expected} bytes, not {declared}",
        )
    try:
        body = await request.body()
    except InternalServerException as error:
        # Litestar's word for a client that went away mid-body: there is no one to answer.
        raise InvalidInputError(f"part not received whole: {error.detail}") from None
    digest = request.headers.get("x-part-digest", "")
    try:
        await anyio.to_thread.run_sync(state.uploads.put_part, session, index, part, body, digest)
    except DigestMismatchError as error:
        state.metrics.integrity_failures.inc()
        _security_event(request, "integrity-failure", str(error))
        raise
    state.metrics.bytes_in.inc(len(body))


@post("/v1/uploads/{session_id:str}/commit", sync_to_thread=True, tags=["uploads"], status_code=201)
def commit_upload(request: Request[Any, Any, Any], session_id: FromPath[str]) -> dict[str, Any]:
    """Re-hash every file, then push them as a new version (encrypted and stored by the
    server); the session is discarded."""
    view, token = _enter(request, PUSHER)
    state = _state(request)
    session = state.uploads.get(session_id, owner=token.id)
    _check_scope(token, session.model)
    with state.uploads.claimed(session) as claimed:
        try:
            folder, digests = state.uploads.assemble(claimed)
        except DigestMismatchError as error:
            state.metrics.integrity_failures.inc()
            _security_event(request, "integrity-failure", str(error))
            raise
        result = view.push(claimed.model, folder, message=claimed.message, digests=digests)
        state.uploads.discard(claimed)
    state.metrics.pushed.inc(result.version.total_size)
    return {
        **_version(result.version),
        "created": result.created,
        "uploaded_bytes": result.uploaded_bytes,
        "reused_bytes": result.reused_bytes,
        "pending_regions": list(result.pending_regions),
    }


@delete("/v1/uploads/{session_id:str}", sync_to_thread=True, tags=["uploads"], status_code=204)
def abandon_upload(request: Request[Any, Any, Any], session_id: FromPath[str]) -> None:
    """Discard a session and what it received."""
    _view, token = _enter(request, PUSHER)
    state = _state(request)
    with state.uploads.claimed(state.uploads.get(session_id, owner=token.id)) as claimed:
        state.uploads.discard(claimed)


# -- aliases -------------------------------------------------------------------------------------


@post("/v1/aliases/promote", sync_to_thread=True, tags=["aliases"], status_code=200)
def promote(request: Request[Any, Any, Any], data: JSONBody[PromoteRequest]) -> dict[str, Any]:
    """Point an alias at a version (a protected alias needs the promoter role)."""
    view, _token = _enter(request, PUSHER, ref=data.ref)
    change = view.promote(data.ref, data.alias, reason=data.reason)
    return {
        **_alias(change.alias),
        "moved": change.move is not None,
        "move": None if change.move is None else _move(change.move),
        "undelivered": list(change.undelivered),
        "unlocked": list(change.unlocked),
    }


@post("/v1/aliases/rollback", sync_to_thread=True, tags=["aliases"], status_code=200)
def rollback(request: Request[Any, Any, Any], data: JSONBody[RollbackRequest]) -> dict[str, Any]:
    """Move an alias back (to the version before, or to `to`)."""
    view, token = _enter(request, PUSHER, model=data.model)
    if data.to is not None:
        _check_scope(token, _model_of(data.to))
    change = view.rollback(data.model, data.alias, to=data.to, reason=data.reason)
    return {
        **_alias(change.alias),
        "moved": change.move is not None,
        "move": None if change.move is None else _move(change.move),
        "undelivered": list(change.undelivered),
        "unlocked": list(change.unlocked),
    }


@dataclass
class ProtectRequest:
    model: str
    alias: str
    protected: bool = True


@post("/v1/aliases/protect", sync_to_thread=True, tags=["aliases"], status_code=200)
def protect(request: Request[Any, Any, Any], data: JSONBody[ProtectRequest]) -> dict[str, Any]:
    """Protect an alias (moving it then needs the promoter role), or unprotect it."""
    view, _token = _enter(request, PROMOTER, model=data.model)
    return _alias(view.protect_alias(data.model, data.alias, protected=data.protected))


@get("/v1/aliases", sync_to_thread=True, tags=["aliases"])
def aliases(request: Request[Any, Any, Any], model: FromQuery[str]) -> list[dict[str, Any]]:
    """A model's aliases."""
    view, _token = _enter(request, READER, model=model)
    return [_alias(a) for a in view.aliases(model)]


@get("/v1/history", sync_to_thread=True, tags=["aliases"])
def history(
    request: Request[Any, Any, Any],
    model: FromQuery[str],
    alias: FromQuery[str | None] = None,
    at: FromQuery[str | None] = None,
) -> list[dict[str, Any]]:
    """Alias moves, oldest first; with `at`, where each alias pointed at that instant."""
    view, _token = _enter(request, READER, model=model)
    return [_move(m) for m in view.history(model, alias, at=_time(at))]


# -- retention, holds, gc, delete, audit ------------------------------------------------------


@get(
    "/v1/retention",
    sync_to_thread=True,
    tags=["lifecycle"],
    summary="Retention",
    operation_id="Retention",
)
def retention(request: Request[Any, Any, Any], model: FromQuery[str]) -> dict[str, Any]:
    """The retention policy in force for a model and where it comes from."""
    view, _token = _enter(request, READER, model=model)
    policy, source = view.retention(model)
    return {"model": model, "source": source, **_policy(policy)}


@put("/v1/retention", sync_to_thread=True, tags=["lifecycle"], status_code=200)
def set_retention(
    request: Request[Any, Any, Any], data: JSONBody[RetentionRequest]
) -> dict[str, Any]:
    """Replace a model's policy (`model` null: the registry default)."""
    view, _token = _enter(request, ADMIN, model=data.model, everything=data.model is None)
    policy = view.set_retention(
        data.model,
        keep_last=data.keep_last,
        keep_within=data.keep_within,
        keep_demoted_for=data.keep_demoted_for,
        clear=data.clear,
    )
    return {"model": data.model or "*", **_policy(policy)}


@get("/v1/retention/plan", sync_to_thread=True, tags=["lifecycle"])
def retention_plan(request: Request[Any, Any, Any], model: FromQuery[str]) -> dict[str, Any]:
    """Dry run of a model's policy: which versions it keeps and why."""
    view, _token = _enter(request, READER, model=model)
    [(name, policy, decisions)] = view.plan_retention(model)
    return {
        "model": name,
        **_policy(policy),
        "versions": [
            {"version": d.number, "keep": d.keep, "reasons": list(d.reasons)} for d in decisions
        ],
    }


@get("/v1/holds", sync_to_thread=True, tags=["lifecycle"], summary="Holds", operation_id="Holds")
def holds(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """Legal holds on the models this token may read."""
    view, token = _enter(request, READER)
    return [
        _hold(h) for h in view.holds() if any(fnmatch.fnmatchcase(h.name, p) for p in token.models)
    ]


@post("/v1/holds", sync_to_thread=True, tags=["lifecycle"], status_code=200)
def set_hold(request: Request[Any, Any, Any], data: JSONBody[HoldRequest]) -> dict[str, Any]:
    """Place a legal hold (admin)."""
    view, _token = _enter(request, ADMIN, ref=data.ref)
    result = view.hold(data.ref, reason=data.reason)
    return {
        **_hold(result.hold),
        "changed": result.changed,
        "objects": result.objects,
        "failed_regions": list(result.failed_regions),
    }


@post("/v1/holds/release", sync_to_thread=True, tags=["lifecycle"], status_code=200)
def release_hold(request: Request[Any, Any, Any], data: JSONBody[HoldRequest]) -> dict[str, Any]:
    """Release a legal hold (admin)."""
    view, _token = _enter(request, ADMIN, ref=data.ref)
    result = view.release_hold(data.ref, reason=data.reason)
    return {
        **_hold(result.hold),
        "changed": result.changed,
        "objects": result.objects,
        "failed_regions": list(result.failed_regions),
    }


@post("/v1/gc", sync_to_thread=True, tags=["lifecycle"], status_code=200)
def gc(request: Request[Any, Any, Any], data: JSONBody[GcRequest]) -> dict[str, Any]:
    """Expire, extend locks and sweep (admin, with a token for every model; `dry_run`
    defaults to true)."""
    view, _token = _enter(request, ADMIN, everything=True)
    return view.gc(dry_run=data.dry_run, grace=data.grace).to_dict()


@post("/v1/delete", sync_to_thread=True, tags=["lifecycle"], status_code=200)
def delete_version(
    request: Request[Any, Any, Any], data: JSONBody[DeleteRequest]
) -> dict[str, Any]:
    """Delete one version outside the policy (admin; refused while anything keeps it)."""
    view, _token = _enter(request, ADMIN, ref=data.ref)
    return _version(view.delete(data.ref, reason=data.reason))


@get("/v1/audit", sync_to_thread=True, tags=["audit"])
def audit(
    request: Request[Any, Any, Any],
    model: FromQuery[str | None] = None,
    since: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> list[dict[str, Any]]:
    """The audit trail, newest first (admin; without `model`, a token for every model)."""
    view, _token = _enter(request, ADMIN, model=model, everything=model is None)
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "subject": e.subject,
            "details": e.details,
        }
        for e in view.audit_events(subject=model, since=_time(since), limit=limit)
    ]


@get("/v1/audit/verify", sync_to_thread=True, tags=["audit"])
def audit_verify(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Walk the audit hash chain (admin, with a token for every model)."""
    view, _token = _enter(request, ADMIN, everything=True)
    result = view.verify_audit()
    return {
        "ok": result.ok,
        "checked": result.checked,
        "first_bad": result.first_bad,
        "problem": result.problem,
        "head": result.head,
        "links_only": result.links_only,
    }


# -- errors, metrics middleware, security events ---------------------------------------------


def _security_event(request: Request[Any, Any, Any], kind: str, detail: str) -> None:
    _state(request).metrics.security_events.labels(kind).inc()
    security_log.warning("security event %s from %s: %s", kind, _client(request), detail)


def _note_read(request: Request[Any, Any, Any], token: TokenRecord, model: str) -> None:
    signal = _state(request).watch.note_read(token.id, model)
    if signal is not None:
        _security_event(request, signal, f"token {token.id} read many distinct models")


def _error_body(code: str, message: str, hint: str = "") -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint}}


def _registry_error(request: Request[Any, Any, Any], error: RegistryError) -> Response[Any]:
    state = _state(request)
    status = error.http_status
    if status in (401, 403):
        signal = state.watch.note_refusal(_client(request))
        if signal is not None:
            _security_event(request, signal, f"{status} answers to this client")
    if isinstance(error, IntegrityError):
        state.metrics.integrity_failures.inc()
        _security_event(request, "integrity-failure", str(error))
    headers = {}
    if isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(error.retry_after + 0.5)))
    return Response(
        _error_body(error.code, error.message, error.hint), status_code=status, headers=headers
    )


_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _http_error(_request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code
    if status >= 500:
        return _internal_error(_request, error)
    code = _HTTP_CODES.get(status, "invalid_input")
    detail = error.detail if isinstance(error.detail, str) else "invalid request"
    extra = getattr(error, "extra", None)
    if isinstance(extra, list) and extra:
        detail = f"{detail}: {extra[0].get('message', '')} ({extra[0].get('key', '')})"
    return Response(_error_body(code, detail), status_code=status)


def _internal_error(_request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    if isinstance(error, RecursionError):
        # msgspec refuses JSON nested deeper than it can decode: the client's input, not a bug.
        return Response(
            _error_body("invalid_input", "the JSON body is nested too deeply"), status_code=400
        )
    logging.getLogger("model_registry.api").exception("unexpected error", exc_info=error)
    return Response(
        _error_body("internal", "unexpected server error (a bug: please report it)"),
        status_code=500,
    )


def _metrics_middleware(metrics_of: Callable[[], Metrics]) -> Callable[[ASGIApp], ASGIApp]:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = scope.get("path_template") or "unmatched"
                method = scope.get("method", "")
                board = metrics_of()
                board.requests.labels(route, method, str(status)).inc()
                board.latency.labels(route, method).observe(time.perf_counter() - started)

        return middleware

    return factory


ROUTES = [
    healthz,
    readyz,
    metrics,
    list_models,
    list_versions,
    show_version,
    download,
    verify,
    key_broker,
    create_upload,
    upload_status,
    upload_part,
    commit_upload,
    abandon_upload,
    promote,
    rollback,
    protect,
    aliases,
    history,
    retention,
    set_retention,
    retention_plan,
    holds,
    set_hold,
    release_hold,
    gc,
    delete_version,
    audit,
    audit_verify,
]


def create_app(
    registry: Registry, *, staging: Path | None = None, part_size: int | None = None
) -> Litestar:
    """The application over an open registry (closed by the caller), with the limits of its
    `[api]` settings. `staging` (upload sessions) and `part_size` (what clients upload per
    request) override those settings."""
    settings = registry.settings.api
    board = Metrics()
    state = State(
        registry=registry,
        uploads=Uploads(
            staging or settings.staging_dir or registry.settings.home / "uploads",
            part_size=part_size or settings.part_size,
            ttl=settings.upload_ttl_hours * 3600.0,
        ),
        metrics=board,
        limiter=RateLimiter(settings.requests_per_second, settings.burst),
        transfer_limiter=RateLimiter(
            settings.transfer_requests_per_second, settings.transfer_burst
        ),
        broker_limiter=RateLimiter(settings.key_requests_per_second, settings.key_burst),
        watch=Watch(settings),
    )
    timer = _JournalTimer(registry, settings.journal_interval_seconds)
    return Litestar(
        route_handlers=ROUTES,
        on_startup=[timer.start],
        on_shutdown=[timer.stop],
        state=_AppState({"registry_state": state}),
        exception_handlers={
            RegistryError: _registry_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        middleware=[_metrics_middleware(lambda: board)],
        request_max_body_size=JSON_LIMIT,
        openapi_config=_openapi_config(),
        debug=False,
    )


class _JournalTimer:
    """Copies the journal out every `interval` seconds, so entries written by reads (their
    audit) or left behind by a region that was down reach the stores without another change."""

    def __init__(self, registry: Registry, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._registry.drain_journal()
            except Exception:
                logging.getLogger("model_registry.journal").exception("journal drain failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="model-registry",
        version=__version__,
        description="Immutable, encrypted, verified model artifact registry: REST API. Errors "
        'are {"error": {"code", "message", "hint"}} with a stable code.',
        path="/schema",
        render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
        components=Components(
            security_schemes={
                "token": SecurityScheme(
                    type="http", scheme="bearer", description="model-registry API token"
                )
            }
        ),
        security=[{"token": []}],
    )


def openapi_document() -> str:
    """The OpenAPI schema of the routes, as canonical JSON (what docs/api/openapi.json holds).
    Built without a registry: the schema depends on the code alone."""
    app = Litestar(
        route_handlers=ROUTES,
        openapi_config=_openapi_config(),
        exception_handlers={RegistryError: _registry_error},
    )
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True) + "\n"


def _AppState(values: dict[str, Any]) -> Any:  # noqa: N802 - mirrors litestar.datastructures.State
    from litestar.datastructures import State as LitestarState

    return LitestarState(values)
