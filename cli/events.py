"""`events add-webhook|ls|deliver`: alias-move events for serving fleets and caches."""

from __future__ import annotations

import sys

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table, when
from registry import wire
from registry.errors import StorageError

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def events() -> None:
    """Webhooks told of every alias move (HMAC-signed, retried, every delivery recorded)."""


@events.command("add-webhook")
@click.argument("url")
@JSON
@handle_errors
def add_webhook(url: str, as_json: bool) -> None:
    """Send every alias move to URL; prints the file with its signing secret."""
    with open_registry() as registry:
        hook = registry.add_webhook(url)
    if as_json:
        print_json(wire.Webhook.of(hook))
    else:
        stdout.print(f"webhook {hook.url}: signing secret in {hook.secret_file}")


@events.command("ls")
@click.option("--pending", is_flag=True, help="Only deliveries not yet made.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@JSON
@handle_errors
def list_(pending: bool, limit: int, as_json: bool) -> None:
    """Recorded deliveries, newest first."""
    with open_registry() as registry:
        found = registry.deliveries(pending_only=pending, limit=limit)
    if as_json:
        print_json([wire.Delivery.of(d) for d in found])
        return
    listed = table("id", "url", "attempts", "delivered", wide=("last error",))
    for d in found:
        listed.add_row(
            str(d.id),
            d.url,
            str(d.attempts),
            when(d.delivered_at) if d.delivered_at else "pending",
            d.last_error,
        )
    print_table(listed)


@events.command()
@JSON
@handle_errors
def deliver(as_json: bool) -> None:
    """Retry every pending delivery; exit 9 while any is left."""
    with open_registry() as registry:
        failed = registry.deliver_events()
    if as_json:
        print_json(wire.DeliveryRun.of(failed))
    elif not failed:
        stdout.print("every event delivered")
    for failure in failed:
        click.echo(f"still pending: {failure}", err=True)
    if failed:
        sys.exit(StorageError.exit_code)


def register(group: click.Group) -> None:
    group.add_command(events)
