"""Webhooks: the receivers of alias-move events, the delivery of pending events with retries,
and the record of every delivery.
"""

from __future__ import annotations

import time
import uuid

from registry import events
from registry.config import (
    Webhook,
)
from registry.crypto.keys import (
    create_key_file,
)
from registry.errors import (
    ConfigurationError,
    InvalidInputError,
    RegistryError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.signers import editing_config
from registry.records import DeliveryRecord


@requires("webhooks")
def add_webhook(ctx: Context, url: str) -> Webhook:
    """Send alias-move events to `url`, signed with a new secret kept in the key directory
    (give the receiver that file's key)."""
    if any(hook.url == url for hook in ctx.settings.webhooks):
        raise InvalidInputError(f"webhook {url} is already configured")
    secret_file = ctx.settings.naming_key_file.parent / f"webhook-{uuid.uuid4().hex[:8]}.key"
    hook = Webhook(url, secret_file)  # validates the URL before anything is written
    create_key_file(secret_file, label="webhook secret")
    with editing_config(ctx) as config:
        config.setdefault("webhooks", []).append({"url": hook.url, "secret_file": str(secret_file)})
    return hook


@requires("deliver-events")
def deliver_events(ctx: Context, *, attempts: int = 3, backoff: float = 0.5) -> list[str]:
    """Deliver every pending event (see `deliver_pending`): the command an operator runs."""
    return deliver_pending(ctx, attempts=attempts, backoff=backoff)


@requires("deliver-events")
def deliveries(
    ctx: Context, *, pending_only: bool = False, limit: int = 100
) -> list[DeliveryRecord]:
    """The recorded deliveries of events to webhooks, newest first (with `pending_only`, those
    not yet made)."""
    if not 1 <= limit <= 1_000_000:
        raise InvalidInputError("limit must be 1..1000000")
    return ctx.catalog.deliveries(pending_only=pending_only, limit=limit)


def deliver_pending(ctx: Context, *, attempts: int = 3, backoff: float = 0.5) -> list[str]:
    """Deliver every pending event, oldest first, each up to `attempts` times with
    exponential backoff; every attempt is recorded. A URL whose event fails gets none of its
    later events this time (a receiver never sees a newer move before an older one).
    Returns "url: error" for each delivery still pending."""
    hooks = {hook.url: hook for hook in ctx.settings.webhooks}
    failed: list[str] = []
    blocked: set[str] = set()
    pending = ctx.catalog.deliveries(pending_only=True, limit=1_000_000, oldest_first=True)
    for delivery in pending:
        hook = hooks.get(delivery.url)
        if delivery.url in blocked:
            failed.append(f"{delivery.url}: waiting for an earlier event")
            continue
        error: str | None = None
        for attempt in range(attempts):
            try:
                if hook is None:
                    raise ConfigurationError(f"webhook {delivery.url} is no longer configured")
                events.post(
                    delivery.url,
                    delivery.payload,
                    secret=events.read_secret(hook.secret_file),
                    event_id=delivery.event_id,
                    delivery=delivery.id,
                )
                error = None
            except RegistryError as problem:
                error = str(problem)
            ctx.catalog.record_delivery(delivery.id, error=error)
            if error is None or hook is None:
                break
            if attempt < attempts - 1:
                time.sleep(backoff * 2**attempt)
        if error is not None:
            blocked.add(delivery.url)
            failed.append(f"{delivery.url}: {error}")
    return failed
