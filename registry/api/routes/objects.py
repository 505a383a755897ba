"""Stored objects at stable, immutable URLs: `/v1/objects/{id}` serves a blob's or a manifest's
sealed ciphertext under its store name, so that HTTP caches and P2P distributors in front of the
registry share one copy across a fleet (docs/operations.md, "Fan-out through caches"). The id
says nothing of the content; the bytes are useless without the key broker's data keys, which
stay token-authorised and audited (docs/security.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from litestar import Controller, Request, Response, get, head
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from litestar.response import Stream

from registry.api.common import note_read, state_of
from registry.api.errors import error_body
from registry.api.guards import authorize, enter
from registry.errors import InvalidInputError
from registry.reports import SealedObject
from registry.service import Registry

OCTETS = "application/octet-stream"
# A year, and never revalidated: an object URL's bytes never change (its id is a keyed hash of
# the content). `public` lets a shared cache store answers to requests that carry a token
# (RFC 9111 section 3.5).
CACHE_CONTROL = "public, max-age=31536000, immutable"
STREAM_CHUNK = 4 * 1024 * 1024  # bytes read from the stores per step of a streamed answer
_RANGE = re.compile(r"bytes=([0-9]{0,20})-([0-9]{0,20})", re.ASCII)


class ObjectsController(Controller):
    path = "/v1/objects"
    guards = (authorize,)

    @get(
        "/{object_id:str}",
        sync_to_thread=True,
        tags=["models"],
        media_type=OCTETS,
        responses={
            200: ResponseSpec(
                data_container=bytes,
                media_type=OCTETS,
                description="The whole object, streamed",
                generate_examples=False,
            ),
            206: ResponseSpec(
                data_container=bytes,
                media_type=OCTETS,
                description="The range asked for (Content-Range says where)",
                generate_examples=False,
            ),
            304: ResponseSpec(None, description="If-None-Match named this object's ETag"),
            416: ResponseSpec(None, description="The range lies outside the object"),
        },
        operation="read-sealed",
        transfer=True,
    )
    def read_object(
        self, request: Request[Any, Any, Any], object_id: FromPath[str]
    ) -> Response[Any]:
        """A stored object's sealed ciphertext, whole (streamed) or one `Range: bytes=` range
        (206), at a URL that never changes: `ETag` is the id, `Cache-Control` lets shared
        caches keep it for a year. Ids come from the key broker's answer (POST /v1/keys,
        each key's `object`); the token must be allowed to read a model that references the
        object, or the answer is the 404 of a missing one."""
        view, target = _target(request, object_id)
        headers = _headers(object_id)
        if _not_modified(request, object_id):
            return Response(b"", status_code=304, headers=headers)
        size = target.size
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if wanted is not None and if_range is not None and if_range.strip() != _etag(object_id):
            wanted = None  # RFC 9110 13.1.5: not the representation the client has; send all
        if wanted is None:
            offset, length, status = 0, size, 200
        else:
            found = _byte_range(wanted, size)
            if found is None:
                return Response(
                    error_body(
                        "range_not_satisfiable",
                        f"range {wanted[:80]!r} lies outside the object ({size} bytes)",
                        "ask for bytes=START-END with START below the object's size",
                    ),
                    status_code=416,
                    media_type="application/json",
                    headers={**headers, "Content-Range": f"bytes */{size}"},
                )
            offset, length = found
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
        headers["Content-Length"] = str(length)
        return Stream(
            _chunks(request, view, target, offset, length),
            status_code=status,
            media_type=OCTETS,
            headers=headers,
        )

    @head(
        "/{object_id:str}",
        sync_to_thread=True,
        tags=["models"],
        responses={
            200: ResponseSpec(
                data_container=bytes,
                media_type=OCTETS,
                description="The object's headers (its size in Content-Length), no body",
                generate_examples=False,
            ),
            304: ResponseSpec(None, description="If-None-Match named this object's ETag"),
        },
        operation="read-sealed",
        transfer=True,
    )
    def object_headers(
        self, request: Request[Any, Any, Any], object_id: FromPath[str]
    ) -> Response[None]:
        """The headers a GET of the object answers (its size in Content-Length), no bytes:
        also what a cache in front asks to have a token checked (docs/operations.md)."""
        _view, target = _target(request, object_id)
        headers = _headers(object_id)
        if _not_modified(request, object_id):
            return Response(None, status_code=304, headers=headers)
        # Set here: Litestar writes neither for an answer to HEAD.
        headers.update({"Content-Length": str(target.size), "Content-Type": OCTETS})
        return Response(None, status_code=200, headers=headers)


def _target(request: Request[Any, Any, Any], object_id: str) -> tuple[Registry, SealedObject]:
    view, token = enter(request)
    target = view.stored_object(object_id, models=token.models)
    note_read(request, token, target.version.name)
    return view, target


def _etag(object_id: str) -> str:
    return f'"{object_id}"'


def _headers(object_id: str) -> dict[str, str]:
    return {"ETag": _etag(object_id), "Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes"}


def _not_modified(request: Request[Any, Any, Any], object_id: str) -> bool:
    """Whether If-None-Match names this object (weak comparison, RFC 9110 13.1.2)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or _etag(object_id) in tags


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(offset, length) of one `bytes=A-B`, `bytes=A-` or `bytes=-N` range of an object of
    `size` bytes; None when it lies outside the object (a 416)."""
    found = _RANGE.fullmatch(header.replace(" ", ""))
    if found is None or (not found[1] and not found[2]):
        raise InvalidInputError(
            f"unsupported range {header[:80]!r}",
            hint="one range: bytes=START-END, bytes=START- or bytes=-LAST",
        )
    if not found[1]:  # the last N bytes
        last = int(found[2])
        return None if last == 0 or size == 0 else (max(0, size - last), min(last, size))
    start = int(found[1])
    end = int(found[2]) if found[2] else None
    if end is not None and start > end:
        raise InvalidInputError(f"range {header[:80]!r} ends before it starts")
    if start >= size:
        return None
    end = size - 1 if end is None else end
    return start, min(end, size - 1) - start + 1


def _chunks(
    request: Request[Any, Any, Any],
    view: Registry,
    target: SealedObject,
    offset: int,
    length: int,
) -> Iterator[bytes]:
    """The range read from the stores a step at a time (each with fail-over between regions):
    a shard of many GB is never held whole in memory."""
    metrics = state_of(request).metrics
    end = offset + length
    while offset < end:
        data = view.read_sealed(target, offset, min(STREAM_CHUNK, end - offset))
        if not data:
            return
        metrics.bytes_out.inc(len(data))
        offset += len(data)
        yield data
