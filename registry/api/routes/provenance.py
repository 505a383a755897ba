"""OpenSSF model signatures through the API: the public key of the server's OpenSSF signer, and
a version's `model.sig` signed by it (the server holds the key; a client cannot sign)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.params import FromQuery

from registry import wire
from registry.api.common import note_read
from registry.api.guards import authorize, enter


class ProvenanceController(Controller):
    path = "/v1/openssf"
    tags = ("provenance",)
    guards = (authorize,)

    @get("/public-key", sync_to_thread=True, operation="read")
    def public_key(self, request: Request[Any, Any, Any]) -> wire.OpenSSFKey:
        """The PEM public key of the server's OpenSSF signer and its SHA-256 fingerprint."""
        view, _token = enter(request)
        return wire.OpenSSFKey.of(view.openssf_public_key())

    # The bytes as signed and sent by model_signing's own tools (a JSON document the client
    # writes out verbatim): described as an opaque body, not re-encoded.
    @get("/signature", sync_to_thread=True, operation="pull", media_type="application/octet-stream")
    def signature(self, request: Request[Any, Any, Any], ref: FromQuery[str]) -> Response[bytes]:
        """`model.sig` for a version: an OpenSSF model signature of its files (their recorded
        SHA-256 digests), by the server's OpenSSF key; audited."""
        view, token = enter(request, ref=ref)
        data = view.openssf_signature(ref)
        note_read(request, token, view.resolve(ref).name)
        return Response(data, media_type="application/octet-stream")
