"""Ciphertext and the key broker: what a serving node needs to decrypt and verify a version
itself (the server never sends plaintext)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody

from registry import wire
from registry.api.common import note_read, parse_range, security_event, state_of
from registry.api.guards import authorize, enter

OCTETS = "application/octet-stream"


@dataclass
class KeysRequest:
    ref: str


class BlobsController(Controller):
    path = "/v1"
    guards = (authorize,)

    @get(
        "/blob",
        sync_to_thread=True,
        tags=["models"],
        status_code=206,
        media_type=OCTETS,
        responses={
            206: ResponseSpec(
                data_container=bytes,
                media_type=OCTETS,
                description="The range of sealed ciphertext (Content-Range says where)",
                generate_examples=False,
            )
        },
        operation="read-sealed",
        transfer=True,
    )
    def download(
        self,
        request: Request[Any, Any, Any],
        ref: FromQuery[str],
        path: FromQuery[str | None] = None,
    ) -> Response[bytes]:
        """A byte range of the sealed ciphertext of one file of a version (or, without `path`,
        of its manifest): `Range: bytes=START-END`. Decrypt with the key broker's data key."""
        view, token = enter(request, ref=ref)
        target = view.sealed_object(ref, path)
        offset, length = parse_range(request.headers.get("range"), target.size)
        data = view.read_sealed(target, offset, length)
        state_of(request).metrics.bytes_out.inc(len(data))
        note_read(request, token, target.version.name)
        return Response(
            data,
            status_code=206,
            media_type=OCTETS,
            headers={
                "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{target.size}",
                "X-Model-Registry-Digest": target.digest,
            },
        )

    @post("/keys", sync_to_thread=True, tags=["keys"], status_code=200, operation="key-broker")
    def key_broker(
        self, request: Request[Any, Any, Any], data: JSONBody[KeysRequest]
    ) -> wire.DataKeys:
        """The key broker: the data keys of a version's files and manifest, for a token allowed
        to read the model. Rate-limited per token and audited (with the keys it unwrapped), so
        serving nodes never hold the key-encryption key or KMS rights."""
        view, token = enter(request, ref=data.ref)
        state = state_of(request)
        state.broker_limiter.check(token.id)
        brokered = view.broker_keys(data.ref, token=token.id)
        note_read(request, token, brokered.version.name)
        # This request's own count: what its operations unwrapped, as its audit entry says.
        unwraps = view.unwraps
        state.metrics.unwraps.labels(token.id).inc(unwraps)
        signal = state.watch.note_unwraps(token.id, unwraps)
        if signal is not None:
            # The window's total (across the fleet when counts are shared), not this call's.
            security_event(request, signal.kind, signal.detail)
        return wire.DataKeys.of(brokered)
