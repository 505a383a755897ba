"""Upload sessions: a push through the API, resumable, part by part (`registry.api.uploads`)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Controller, Request, delete, get, post, put
from litestar.exceptions import HTTPException, InternalServerException
from litestar.params import FromPath, JSONBody

from registry import wire
from registry.api.common import security_event, state_of
from registry.api.guards import authorize, check_scope, enter
from registry.api.uploads import Session, UploadFile
from registry.config import MAX_UPLOAD_PART
from registry.errors import DigestMismatchError, InvalidInputError, RegistryError
from registry.provenance import ProvenanceRequest, parse_dataset, parse_meta

# A model.sig in base64 within the API's 1 MiB request body: some 5,000 files' digests.
MAX_SIGNATURE = 700 * 1024


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
class CommitRequest:
    """What a push states beside its files (`push --meta`, `--base-model`, ...: the signed
    manifest's provenance) and an OpenSSF model signature of them (base64 of model.sig)."""

    meta: dict[str, str] | None = None
    source_repo: str | None = None
    source_commit: str | None = None
    run_url: str | None = None
    base_model: str | None = None
    datasets: list[str] | None = None
    signature: str | None = None

    def provenance(self) -> ProvenanceRequest:
        return ProvenanceRequest(
            parse_meta(self.meta or {}),
            self.source_repo,
            self.source_commit,
            self.run_url,
            self.base_model,
            tuple(parse_dataset(text) for text in self.datasets or ()),
        )

    def signature_bytes(self) -> bytes | None:
        if self.signature is None:
            return None
        if len(self.signature) > MAX_SIGNATURE * 4 // 3 + 4:
            raise InvalidInputError(f"an OpenSSF signature is at most {MAX_SIGNATURE} bytes")
        try:
            return base64.b64decode(self.signature, validate=True)
        except ValueError:
            raise InvalidInputError("the signature is not base64") from None


def session_json(session: Session) -> wire.UploadSession:
    return wire.UploadSession(
        id=session.id,
        model=session.model,
        part_size=session.part_size,
        files=[
            wire.UploadFileState(
                index=index,
                path=f.path,
                size=f.size,
                digest=f.digest,
                parts=f.parts(session.part_size),
                received=session.received(index),
            )
            for index, f in enumerate(session.files)
        ],
    )


class UploadsController(Controller):
    path = "/v1/uploads"
    tags = ("uploads",)
    guards = (authorize,)

    @post("/", sync_to_thread=True, status_code=201, operation="push")
    def create_upload(
        self, request: Request[Any, Any, Any], data: JSONBody[UploadRequest]
    ) -> wire.UploadSession:
        """Open an upload session for a new version: the files, their sizes and BLAKE3
        digests."""
        _view, token = enter(request, model=data.model)
        if len(data.message) > 65536:
            raise InvalidInputError("the message is longer than 65536 characters")
        files = [UploadFile(f.path, f.size, f.digest) for f in data.files]
        session = state_of(request).uploads.create(
            data.model, files, message=data.message, owner=token.id
        )
        return session_json(session)

    @get(
        "/{session_id:str}",
        sync_to_thread=True,
        summary="UploadStatus",
        operation_id="UploadStatus",
        operation="push",
    )
    def upload_status(
        self, request: Request[Any, Any, Any], session_id: FromPath[str]
    ) -> wire.UploadSession:
        """What a session has received (a client resumes by sending the rest)."""
        _view, token = enter(request)
        return session_json(state_of(request).uploads.get(session_id, owner=token.id))

    @put(
        "/{session_id:str}/files/{index:int}/parts/{part:int}",
        status_code=204,
        request_max_body_size=MAX_UPLOAD_PART + 1024,
        operation="push",
        transfer=True,
        drain=True,
    )
    async def upload_part(
        self,
        request: Request[Any, Any, Any],
        session_id: FromPath[str],
        index: FromPath[int],
        part: FromPath[int],
    ) -> None:
        """One part of one file: the request body is its bytes (`application/octet-stream`),
        `X-Part-Digest: blake3:<hex>` their digest. A body longer than the part is refused
        (413) before it is read (as soon as it is past the part's length, without a
        Content-Length)."""
        state = state_of(request)

        def where() -> tuple[Session, int]:
            _view, token = enter(request)
            session = state.uploads.get(session_id, owner=token.id)
            return session, state.uploads.part_length(session, index, part)

        # The session and the part are checked before the body is kept in memory.
        try:
            session, expected = await anyio.to_thread.run_sync(where)
        except RegistryError:
            # Read the body (bounded by the route's limit), discarding it, so that the client
            # sees this answer rather than a broken connection (see `guards.authorize`).
            async for _chunk in request.stream():
                pass
            raise
        declared = request.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > expected:
            raise HTTPException(
                status_code=413,
                detail=f"part {part} of file {index} has {expected} bytes, not {declared}",
            )
        # Read as it arrives and refused once past the part's length: a body without a
        # Content-Length (chunked) is not read whole first.
        received = bytearray()
        try:
            async for chunk in request.stream():
                received += chunk
                if len(received) > expected:
                    raise HTTPException(
                        status_code=413,
                        detail=f"part {part} of file {index} has {expected} bytes, "
                        "and more were sent",
                    )
        except InternalServerException as error:
            # Litestar's word for a client that went away mid-body: there is no one to answer.
            raise InvalidInputError(f"part not received whole: {error.detail}") from None
        digest = request.headers.get("x-part-digest", "")
        try:
            await anyio.to_thread.run_sync(
                state.uploads.put_part, session, index, part, received, digest
            )
        except DigestMismatchError as error:
            state.metrics.integrity_failures.inc()
            security_event(request, "integrity-failure", str(error))
            raise
        state.metrics.bytes_in.inc(len(received))

    @post("/{session_id:str}/commit", sync_to_thread=True, status_code=201, operation="push")
    def commit_upload(
        self,
        request: Request[Any, Any, Any],
        session_id: FromPath[str],
        data: JSONBody[CommitRequest | None] = None,
    ) -> wire.PushResult:
        """Re-hash every file, then push them as a new version (encrypted and stored by the
        server), with the provenance and OpenSSF signature the body states; the session is
        discarded."""
        stated = data or CommitRequest()
        provenance, signature = stated.provenance(), stated.signature_bytes()
        view, token = enter(request)
        state = state_of(request)
        session = state.uploads.get(session_id, owner=token.id)
        check_scope(token, session.model)
        with state.uploads.claimed(session) as claimed:
            try:
                folder, digests = state.uploads.assemble(claimed)
            except DigestMismatchError as error:
                state.metrics.integrity_failures.inc()
                security_event(request, "integrity-failure", str(error))
                raise
            result = view.push(
                claimed.model,
                folder,
                message=claimed.message,
                digests=digests,
                provenance=provenance,
                signature=signature,
            )
            state.uploads.discard(claimed)
        state.metrics.pushed.inc(result.version.total_size)
        return wire.PushResult.of(result)

    @delete("/{session_id:str}", sync_to_thread=True, status_code=204, operation="push")
    def abandon_upload(self, request: Request[Any, Any, Any], session_id: FromPath[str]) -> None:
        """Discard a session and what it received."""
        _view, token = enter(request)
        state = state_of(request)
        with state.uploads.claimed(state.uploads.get(session_id, owner=token.id)) as claimed:
            state.uploads.discard(claimed)
