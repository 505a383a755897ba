"""`[api] staging_bytes_per_token` and the keys of a session chosen together, attacked by a client
holding a pusher token: copies of one content and empty files that the allowance did not count
though each is staged, sizes at the allowance's edge, the Python facade, sessions that end, and
the unwraps of keys chosen on many threads. A refusal is a 413 that leaves no session behind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE
from registry.errors import QuotaExceededError
from registry.records import DeclaredFile
from registry.service import PUSHER
from registry.testing.models import make_model
from tests.test_upload_attack import CHUNK, Attack, _attack, _digest

EMPTY = _digest(b"")


@pytest.fixture
def attack(home: Path) -> Iterator[Attack]:
    yield from _attack(home, None)


@pytest.fixture
def attack_any_catalog(home: Path, catalog_url: str | None) -> Iterator[Attack]:
    yield from _attack(home, catalog_url)


def _staged(size: int) -> int:
    """What a file of `size` bytes takes in the staging folder, sealed (CHUNK-byte chunks)."""
    return HEADER_SIZE + size + TAG_SIZE * max(1, -(-size // CHUNK))


def _open_sessions(attack: Attack) -> list[str]:
    return attack.registry._context.catalog.idle_uploads(datetime.max.replace(tzinfo=UTC))


def _file(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size": len(data), "digest": _digest(data)}


def test_copies_of_one_content_count_for_every_file_whose_parts_are_staged(
    attack_any_catalog: Attack, tmp_path: Path
) -> None:
    """Every file of a session is sent and staged part by part, a copy of another file's
    content too (the commit wants them all): counting a content once let one session of 100
    copies of a file within the allowance stage 100 times the allowance."""
    attack = attack_any_catalog
    data = b"c" * 3000
    api_settings_of(attack, 2 * _staged(3000))
    refused = attack.open([_file(f"copy-{n}.bin", data) for n in range(100)])

    assert refused.status_code == 413, refused.text[:300]
    assert "100 copies" not in refused.text  # the numbers say it: what is staged
    assert f"stages {100 * _staged(3000):,} bytes" in refused.json()["error"]["message"]
    assert _open_sessions(attack) == []
    # Two copies fit, and each is staged: the token then holds what its parts take.
    (tmp_path / "c.bin").write_bytes(data)
    session = attack.open([_file("a.bin", data), _file("b.bin", data)])
    assert session.status_code == 201, session.text[:300]
    for index in range(2):
        attack.send(session.json(), index, tmp_path / "c.bin")
    staged = sum(p.stat().st_size for p in attack.staged(session.json()))
    owner = attack.registry._context.catalog.upload(session.json()["id"]).owner  # type: ignore[union-attr]
    assert staged == attack.registry._context.catalog.staged_bytes(owner) == 2 * _staged(3000)


def test_empty_files_cannot_open_sessions_without_end(attack_any_catalog: Attack) -> None:
    """An empty file declares no bytes but is staged as a sealed header and tag: sessions of
    thousands of them were all within any allowance, however many were opened."""
    attack = attack_any_catalog
    api_settings_of(attack, 10 * _staged(0))
    files = [{"path": f"e{n}", "size": 0, "digest": EMPTY} for n in range(6)]
    assert attack.open(files).status_code == 201
    refused = attack.open(files)
    assert refused.status_code == 413, refused.text[:300]
    assert (
        "stages 642 bytes (its files sealed) and the token's open pushes hold 642 of the 1,070"
        in refused.json()["error"]["message"]
    )
    assert len(_open_sessions(attack)) == 1


def test_a_push_of_exactly_the_allowance_opens_and_one_byte_more_does_not(
    attack: Attack,
) -> None:
    allowance = _staged(1000) + _staged(2000)
    api_settings_of(attack, allowance)
    first = attack.open([_file("a", b"a" * 1000)])
    assert first.status_code == 201, first.text[:300]
    assert attack.open([_file("b", b"b" * 2001)]).status_code == 413
    assert attack.open([_file("b", b"b" * 2000)]).status_code == 201
    assert attack.open([_file("z", b"")]).status_code == 413  # even an empty file is staged
    assert len(_open_sessions(attack)) == 2


def test_the_facade_acting_as_a_token_is_held_to_its_allowance(attack_any_catalog: Attack) -> None:
    """`Registry.acting_as(token).open_upload` is the API's own path: the same refusal (an
    exception, exit 18), no session, no audit entry."""
    attack = attack_any_catalog
    api_settings_of(attack, _staged(1000))
    record, _secret = attack.registry.create_token("py", role=PUSHER, models=["org/*"])
    view = attack.registry.acting_as(record)
    with pytest.raises(QuotaExceededError) as raised:
        view.open_upload("org/m", [DeclaredFile("a", 1001, _digest(b"a" * 1001))])
    assert raised.value.exit_code == 18 and raised.value.http_status == 413
    assert _open_sessions(attack) == []
    assert not [e for e in attack.registry.audit_events() if e.action == "upload-open"]


def test_a_committed_or_expired_push_no_longer_holds_the_tokens_room(
    attack: Attack, tmp_path: Path
) -> None:
    """The room comes back when a push commits, and when one idles past its lifetime (it is
    swept before the allowance is counted); not while it is merely refused at its commit."""
    data = b"q" * 3000
    (tmp_path / "q.bin").write_bytes(data)
    api_settings_of(attack, _staged(3000))
    session = attack.open([_file("q.bin", data)]).json()
    assert attack.open([_file("r.bin", b"r")]).status_code == 413
    assert attack.commit(session).status_code == 400  # no parts yet: still open, still held
    assert attack.open([_file("r.bin", b"r")]).status_code == 413
    attack.send(session, 0, tmp_path / "q.bin")
    assert attack.commit(session).status_code == 201
    idle = attack.open([_file("q.bin", data)]).json()
    catalog = attack.registry._context.catalog
    catalog.touch_upload(idle["id"], at=datetime.now(UTC) - timedelta(hours=25))
    assert attack.open([_file("q.bin", data)]).status_code == 201
    assert catalog.upload(idle["id"]) is None


def test_keys_given_again_together_count_every_session_key_unwrapped(
    attack_any_catalog: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where session keys are issued and unwrapped on many threads, each distinct content gets
    one (stored or not: never the stored object's), the `upload-keys` audit entry of a resumed
    session counts each key unwrapped, and every key given again is the one handed out."""
    from registry.ops import uploads as upload_ops

    attack = attack_any_catalog
    stored = make_model(tmp_path / "stored", shards=6, shard_size=4096, seed=5)
    attack.registry.push("org/stored", stored)
    shards = [
        {"path": p.name, "size": p.stat().st_size, "digest": _digest(p.read_bytes())}
        for p in sorted(stored.rglob("*.safetensors"))
    ]
    assert len(shards) == 6
    files = [*shards, {**shards[0], "path": "again.safetensors"}]
    files += [_file(f"new{n}.bin", bytes([n]) * (n + 1)) for n in range(12)]
    monkeypatch.setattr(attack.registry._context.store.keys, "latency_bound", True)
    assert upload_ops.keys_at_once(attack.registry._context) == upload_ops.KEY_REQUESTS

    answer = attack.open(files)

    assert answer.status_code == 201, answer.text[:300]
    opened = [e for e in attack.registry.audit_events() if e.action == "upload-open"]
    assert opened[0].details["keys"] == 18  # one per distinct content
    issued = {entry["path"]: entry["key"] for entry in answer.json()["files"]}
    assert issued["again.safetensors"] == issued[shards[0]["path"]]
    assert len(set(issued.values())) == 18
    again = attack.client.get(
        f"/v1/uploads/{answer.json()['id']}", headers=attack.tokens["mallory"]
    )
    assert {entry["path"]: entry["key"] for entry in again.json()["files"]} == issued
    given = [e for e in attack.registry.audit_events() if e.action == "upload-keys"]
    assert given[0].details["key_unwraps"] == 18


def api_settings_of(attack: Attack, allowance: int) -> None:
    from tests.apikit import api_settings

    api_settings(attack.registry, staging_bytes_per_token=allowance)


def test_a_push_refused_for_room_or_allowance_wraps_no_session_key(
    attack: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session key is a KMS request for each content stored already: a token past its
    allowance, naming stored digests by the thousand, made the server pay for every one before
    it was refused."""
    stored = make_model(tmp_path / "stored", shards=3, shard_size=4096, seed=9)
    attack.registry.push("org/stored", stored)
    files = [
        {"path": p.name, "size": p.stat().st_size, "digest": _digest(p.read_bytes())}
        for p in sorted(stored.rglob("*.safetensors"))
    ]
    keys = attack.registry._context.replicas.primary.keys
    wraps: list[object] = []
    real = keys.wrap

    def wrap(*args: Any, **kwargs: Any) -> Any:
        wraps.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(keys, "wrap", wrap)
    api_settings_of(attack, 1000)
    refused = attack.open(files)
    assert refused.status_code == 413, refused.text[:300]
    assert wraps == []
    api_settings_of(attack, 0)
    assert attack.open(files).status_code == 201
    assert len(wraps) == 3
