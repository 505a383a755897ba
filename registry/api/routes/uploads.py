"""Upload sessions: a push through the API, sealed by the client, resumable, part by part, to any
server process (`registry.ops.uploads`, `registry.ops.uploadcommit`)."""

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
from registry.api.guards import authorize, enter
from registry.config import MAX_UPLOAD_PART
from registry.errors import DigestMismatchError, InvalidInputError, RegistryError
from registry.provenance import ProvenanceRequest, parse_dataset, parse_meta
from registry.records import DeclaredFile

# A part's sealed bytes: its plaintext, a tag per chunk and, for the first, the header.
MAX_SEALED_PART = MAX_UPLOAD_PART + MAX_UPLOAD_PART // 4

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


class UploadsController(Controller):
    path = "/v1/uploads"
    tags = ("uploads",)
    guards = (authorize,)

    @post("/", sync_to_thread=True, status_code=201, operation="push")
    def create_upload(
        self, request: Request[Any, Any, Any], data: JSONBody[UploadRequest]
    ) -> wire.UploadSession:
        """Open an upload session for a new version: the files, their sizes and BLAKE3
        digests. The answer says how to seal each file: its data key (issued to this token,
        audited), the salt and nonce prefix of its sealed header, the chunk and part layout."""
        view, _token = enter(request, model=data.model)
        files = [DeclaredFile(f.path, f.size, f.digest) for f in data.files]
        return wire.UploadSession.of(view.open_upload(data.model, files, message=data.message))

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
        """What a session has received, and its keys again (a client resumes by sealing and
        sending the rest)."""
        view, _token = enter(request)
        return wire.UploadSession.of(view.upload_keys(session_id))

    @put(
        "/{session_id:str}/files/{index:int}/parts/{part:int}",
        status_code=204,
        request_max_body_size=MAX_SEALED_PART + 1024,
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
        """One part of one file's sealed bytes: the request body (`application/octet-stream`),
        `X-Part-Digest: blake3:<hex>` their digest. Any server process of a fleet takes any
        part. A body longer than the part is refused (413) before it is read (as soon as it is
        past the part's length, without a Content-Length)."""

        def where() -> tuple[Any, int]:
            view, _token = enter(request)
            return view, view.upload_part_length(session_id, index, part)

        # The session and the part are checked before the body is kept in memory.
        try:
            view, expected = await anyio.to_thread.run_sync(where)
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
        state = state_of(request)
        try:
            await anyio.to_thread.run_sync(
                view.put_upload_part, session_id, index, part, received, digest
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
        """Check every file (each chunk authenticated and the plaintext hashed, in memory:
        the server never writes plaintext), store them in every region and commit them as a
        new version, with the provenance and OpenSSF signature the body states; the session
        is discarded. A refused commit keeps the session: send what is missing, commit again."""
        stated = data or CommitRequest()
        provenance, signature = stated.provenance(), stated.signature_bytes()
        view, _token = enter(request)
        state = state_of(request)
        try:
            result = view.commit_upload(session_id, provenance=provenance, signature=signature)
        except DigestMismatchError as error:
            state.metrics.integrity_failures.inc()
            security_event(request, "integrity-failure", str(error))
            raise
        state.metrics.pushed.inc(result.version.total_size)
        return wire.PushResult.of(result)

    @delete("/{session_id:str}", sync_to_thread=True, status_code=204, operation="push")
    def abandon_upload(self, request: Request[Any, Any, Any], session_id: FromPath[str]) -> None:
        """Discard a session and what it received."""
        view, _token = enter(request)
        view.abandon_upload(session_id)
