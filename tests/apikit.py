"""Test helpers for the REST API: change an open registry's `[api]` settings (and its chunk size)
as a config.toml would, seal the parts of a file the way a client does, and wait for a server
process to answer."""

from __future__ import annotations

import base64
import dataclasses
import time
from pathlib import Path
from typing import Any

import blake3
import httpx

from registry.client.upload import seal_part
from registry.crypto.sealed import Sealer
from registry.service import Registry


def api_settings(registry: Registry, *, chunk_size: int | None = None, **changes: Any) -> None:
    """Set `[api]` settings (validated as the config file's) and the store's chunk size."""
    home = registry._context.home
    settings = home.settings
    api = dataclasses.replace(settings.api, **changes)
    home.settings = dataclasses.replace(
        settings, api=api, chunk_size=chunk_size or settings.chunk_size
    )


def sealed_parts(session: dict[str, Any], index: int, source: Path) -> list[tuple[bytes, str]]:
    """The sealed bytes of every part of file `index` of an upload session (its JSON), with the
    X-Part-Digest header a client sends with each."""
    entry = session["files"][index]
    sealer = Sealer(
        base64.b64decode(entry["key"]),
        entry["digest"],
        plaintext_size=entry["size"],
        chunk_size=session["chunk_size"],
        salt=bytes.fromhex(entry["salt"]),
        nonce_prefix=bytes.fromhex(entry["nonce_prefix"]),
    )
    buffer = bytearray(max(1, session["chunk_size"] * session["chunks_per_part"]))
    parts = []
    for part in range(entry["parts"]):
        data = bytes(seal_part(source, sealer, part, session["chunks_per_part"], buffer))
        parts.append((data, "blake3:" + blake3.blake3(data).hexdigest()))
    return parts


def wait_healthy(port: int) -> None:
    """Wait (a minute at most) until the server on `port` answers /healthz."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "a server did not start"
        time.sleep(0.2)
