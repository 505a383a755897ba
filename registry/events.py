"""Webhook events: the JSON body of an alias move, its HMAC-SHA256 signature, and one HTTP POST.

Receivers check `X-Model-Registry-Signature: sha256=<hex>` = HMAC-SHA256(secret, raw body) and use
`X-Model-Registry-Event-Id` to drop duplicates (a retried delivery carries the same id).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from registry.errors import ConfigurationError, StorageError

TIMEOUT = 5.0
SIGNATURE_HEADER = "X-Model-Registry-Signature"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the POST into a GET without the body: count it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def payload(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"))


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: Path) -> bytes:
    try:
        lines = [line for line in path.read_text().splitlines() if line and line[0] != "#"]
        return base64.b64decode(lines[0].strip(), validate=True)
    except (OSError, IndexError, binascii.Error, UnicodeDecodeError) as error:
        raise ConfigurationError(
            f"cannot read the webhook secret {path}: {error}",
            hint="restore it, or remove the webhook and add it again",
        ) from None


def post(url: str, body: str, *, secret: bytes, event_id: str, delivery: int) -> None:
    """POST the event; StorageError unless the receiver answers 2xx within TIMEOUT."""
    data = body.encode()
    request = urllib.request.Request(  # noqa: S310 - the URL scheme is checked in config
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "model-registry",
            "X-Model-Registry-Event": "alias.moved",
            "X-Model-Registry-Event-Id": event_id,
            "X-Model-Registry-Delivery": str(delivery),
            SIGNATURE_HEADER: signature(secret, data),
        },
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        raise StorageError(f"webhook {url} answered {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise StorageError(f"webhook {url} unreachable: {error}") from None
    if not 200 <= status < 300:
        raise StorageError(f"webhook {url} answered {status}")
