"""The REST API's own: upload sessions, health, readiness, and the one error shape."""

from __future__ import annotations

from registry.wire.base import Wire

# -- the REST API's own: upload sessions, health, errors ---------------------------------------


class UploadFileState(Wire, kw_only=True):
    """A file of an upload session: its parts, and which the server has received."""

    index: int
    path: str
    size: int
    digest: str
    parts: int
    received: list[int]


class UploadSession(Wire, kw_only=True):
    id: str
    model: str
    part_size: int
    files: list[UploadFileState]


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
