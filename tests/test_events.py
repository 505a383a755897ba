"""Alias-move events: queued with the move (a transactional outbox), POSTed with an HMAC-SHA256
signature to a local HTTP receiver, retried with backoff when it fails, every attempt recorded,
and retried later by `events deliver`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from registry import events
from registry.service import Registry
from registry.testing.models import make_model


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers `failures` requests with 503 first."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/registry"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def two(
    home: Path, tmp_path: Path, catalog_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.setattr("registry.ops.events.time.sleep", lambda seconds: None)
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for seed in (1, 2):
            registry.push(
                "llama", make_model(tmp_path / f"m{seed}", shards=1, shard_size=5_000, seed=seed)
            )
    return home


def test_alias_moves_are_delivered_signed(two: Path, receiver: Receiver) -> None:
    with Registry.open(two) as registry:
        hook = registry.add_webhook(receiver.url)
    assert hook.secret_file.stat().st_mode & 0o777 == 0o600
    with Registry.open(two) as registry:
        change = registry.promote("llama@1", "production", reason="go")
        registry.promote("llama@2", "production")
        assert change.undelivered == ()
        assert [d.attempts for d in registry.catalog.deliveries()] == [1, 1]
        assert all(d.delivered_at is not None for d in registry.catalog.deliveries())
    secret = events.read_secret(hook.secret_file)
    assert len(receiver.received) == 2
    headers, body = receiver.received[0]
    assert headers["X-Model-Registry-Signature"] == events.signature(secret, body)
    assert events.signature(b"another secret", body) != headers["X-Model-Registry-Signature"]
    event = json.loads(body)
    assert (event["model"], event["alias"], event["version"], event["previous"]) == (
        "llama",
        "production",
        1,
        None,
    )
    assert event["reason"] == "go" and event["registry"].startswith("mr-")
    assert headers["X-Model-Registry-Event-Id"] == event["id"]
    assert json.loads(receiver.received[1][1])["previous"] == 1


def test_a_failing_receiver_is_retried_and_later_delivered(two: Path, receiver: Receiver) -> None:
    with Registry.open(two) as registry:
        registry.add_webhook(receiver.url)
    receiver.failures = 2
    with Registry.open(two) as registry:
        registry.promote("llama@1", "production")
        [delivery] = registry.catalog.deliveries()
        assert delivery.attempts == 3 and delivery.delivered_at is not None
    assert len(receiver.received) == 1

    receiver.failures = 10  # down for longer than one promote's retries
    runner = CliRunner()
    moved = runner.invoke(main, ["promote", "llama@2", "production", "--json"])
    assert moved.exit_code == 0, moved.output  # the move itself is committed
    assert "events deliver" in moved.stderr
    pending = json.loads(runner.invoke(main, ["events", "ls", "--pending", "--json"]).stdout)
    assert len(pending) == 1 and pending[0]["attempts"] == 3 and "503" in pending[0]["last_error"]
    assert runner.invoke(main, ["events", "deliver"]).exit_code == 9  # still failing
    receiver.failures = 0
    assert runner.invoke(main, ["events", "deliver"]).exit_code == 0
    assert json.loads(runner.invoke(main, ["events", "ls", "--pending", "--json"]).stdout) == []
    assert len(receiver.received) == 2


def test_bad_webhook_url_changes_nothing(two: Path) -> None:
    before = (two / "config.toml").read_text()
    result = CliRunner().invoke(main, ["events", "add-webhook", "ftp://example.com/x"])
    assert result.exit_code == 3
    assert (two / "config.toml").read_text() == before
    assert not list((two / "keys").glob("webhook-*"))


def test_events_keep_their_order_and_a_lost_secret_does_not_fail_the_move(
    two: Path, receiver: Receiver
) -> None:
    with Registry.open(two) as registry:
        hook = registry.add_webhook(receiver.url)
    receiver.failures = 3  # the first promote's three attempts fail
    with Registry.open(two) as registry:
        assert registry.promote("llama@1", "production").undelivered
        # The next promote delivers the older event first, then its own.
        assert registry.promote("llama@2", "production").undelivered == ()
    assert [json.loads(body)["version"] for _h, body in receiver.received] == [1, 2]

    hook.secret_file.rename(hook.secret_file.with_suffix(".moved"))
    with Registry.open(two) as registry:
        change = registry.rollback("llama", "production")
        assert change.alias.number == 1  # committed, and said so
        assert "webhook secret" in change.undelivered[0]
