"""The REST API's own: upload sessions, health, readiness, and the one error shape."""

from __future__ import annotations

import base64

from registry import reports
from registry.wire.base import Wire

# -- the REST API's own: upload sessions, health, errors ---------------------------------------


class UploadFileState(Wire, kw_only=True):
    """A file of an upload session: how to seal it (its data key, base64; the salt and nonce
    prefix of its sealed header, hex), its parts, and which the server has received."""

    index: int
    path: str
    size: int
    digest: str
    key: str
    salt: str
    nonce_prefix: str
    sealed_size: int
    parts: int
    received: list[int]


class UploadSession(Wire, kw_only=True):
    """An upload session: every file is sealed in chunks of `chunk_size` plaintext bytes and
    sent in parts of `chunks_per_part` sealed chunks (the first part also holds the header)."""

    id: str
    model: str
    chunk_size: int
    chunks_per_part: int
    files: list[UploadFileState]

    @classmethod
    def of(cls, issued: reports.UploadKeys) -> UploadSession:
        session = issued.session
        return cls(
            id=session.id,
            model=session.model,
            chunk_size=session.chunk_size,
            chunks_per_part=session.chunks_per_part,
            files=[
                UploadFileState(
                    index=f.index,
                    path=f.path,
                    size=f.size,
                    digest=f.digest,
                    key=base64.b64encode(issued.keys[f.index]).decode(),
                    salt=f.salt.hex(),
                    nonce_prefix=f.nonce_prefix.hex(),
                    sealed_size=issued.sealed_sizes[f.index],
                    parts=issued.parts[f.index],
                    received=sorted(p for (i, p) in session.received if i == f.index),
                )
                for f in session.files
            ],
        )


class Health(Wire, kw_only=True):
    status: str


class Readiness(Wire, kw_only=True):
    """`ready`, or `not ready` with what is wrong."""

    status: str
    problems: list[str]


class ErrorDetail(Wire, kw_only=True):
    code: str  # stable: docs/api.md, docs/cli.md
    message: str
    hint: str


class Error(Wire, kw_only=True):
    """Every error answer, and the CLI's `--json` error document."""

    error: ErrorDetail

    @classmethod
    def of(cls, code: str, message: str, hint: str = "") -> Error:
        return cls(error=ErrorDetail(code=code, message=message, hint=hint))
