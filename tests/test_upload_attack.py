"""The push through the REST API, sealed by the client, attacked by a client holding a pusher
token: files that share a digest but not their bytes or size, parts racing the end of their
session, parts sent again to make the server check a file again, a session used past its
lifetime, another token's session, odd part numbers, sizes at the chunk and part boundaries,
hostile safetensors headers, paths that are not paths, and the data key of a digest stored for a
model the token may not read (never handed out). Each attack
must leave nothing stored or recorded that the plaintext does not have, nothing behind in the
staging store, and a 4xx (never a 5xx)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest
from litestar.testing import TestClient

from registry.api.app import create_app
from registry.digest import hash_file
from registry.records import DeclaredFile
from registry.service import ADMIN, PUSHER, Registry
from tests.apikit import api_settings, sealed_parts
from tests.conftest import tree

MiB = 1024 * 1024
CHUNK = 4096


@dataclass
class Attack:
    client: TestClient[Any]
    registry: Registry
    tokens: dict[str, dict[str, str]]
    home: Path

    def open(
        self, files: list[dict[str, Any]], *, who: str = "mallory", model: str = "org/m"
    ) -> Any:
        return self.client.post(
            "/v1/uploads", json={"model": model, "files": files}, headers=self.tokens[who]
        )

    def put(
        self, session: dict[str, Any], index: int, part: int, data: bytes, *, who: str = "mallory"
    ) -> Any:
        return self.client.put(
            f"/v1/uploads/{session['id']}/files/{index}/parts/{part}",
            content=data,
            headers={**self.tokens[who], "X-Part-Digest": _digest(data)},
        )

    def send(
        self, session: dict[str, Any], index: int, source: Path, *, who: str = "mallory"
    ) -> None:
        for part, (data, _digest) in enumerate(sealed_parts(session, index, source)):
            answer = self.put(session, index, part, data, who=who)
            assert answer.status_code == 204, answer.text

    def commit(self, session: dict[str, Any], *, who: str = "mallory") -> Any:
        return self.client.post(f"/v1/uploads/{session['id']}/commit", headers=self.tokens[who])

    def staged(self, session: dict[str, Any]) -> list[Path]:
        folder = self.home / "uploads" / "objects" / "sessions" / session["id"]
        return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def attack(home: Path) -> Iterator[Attack]:
    yield from _attack(home, None)


@pytest.fixture
def attack_any_catalog(home: Path, catalog_url: str | None) -> Iterator[Attack]:
    """`attack` on SQLite and on PostgreSQL."""
    yield from _attack(home, catalog_url)


def _attack(home: Path, catalog_url: str | None) -> Iterator[Attack]:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        api_settings(registry, part_size=MiB, chunk_size=CHUNK)
        tokens = {
            name: {
                "Authorization": f"Bearer {registry.create_token(name, role=role, models=scope)[1]}"
            }
            for name, role, scope in (
                ("mallory", PUSHER, ["org/*"]),
                ("alice", PUSHER, ["org/*"]),
                ("admin", ADMIN, ["*"]),
            )
        }
        with TestClient(create_app(registry)) as client:
            yield Attack(client, registry, tokens, home)


def _digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def _declared(folder: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "digest": hash_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


def _safetensors(name: str, dtype: str) -> bytes:
    """A 16-byte tensor `name` of `dtype`, its header padded to a fixed length: files made for
    different tensors have the same size."""
    header = json.dumps({name: {"dtype": dtype, "shape": [4], "data_offsets": [0, 16]}}).encode()
    header = header.ljust(120)
    return struct.pack("<Q", len(header)) + header + bytes(range(16))


# -- files sharing a digest ----------------------------------------------------------------------


def test_one_digest_declared_with_two_sizes_is_refused_at_open(
    attack: Attack, tmp_path: Path
) -> None:
    """Only one file of a digest is checked and stored: a second one declared with another
    size would be recorded in the manifest with a size its stored bytes do not have."""
    data = b"x" * 10
    files = [
        {"path": "a.bin", "size": 10, "digest": _digest(data)},
        {"path": "b.bin", "size": 20, "digest": _digest(data)},
    ]
    answer = attack.open(files)
    assert answer.status_code == 400, answer.text
    assert "b.bin" in answer.json()["error"]["message"]
    assert "org/m" not in {m.name for m in attack.registry.models()}


def test_a_second_file_of_a_digest_cannot_bring_its_own_safetensors_header(
    attack: Attack, tmp_path: Path
) -> None:
    """b.safetensors has a.safetensors' digest; the client seals, for b, a file of the same size
    with another header (it holds the data key). Only a's parts are checked and stored, so the
    manifest must describe b by the header of those bytes, never by the header b's parts held."""
    model, forged = tmp_path / "model", tmp_path / "forged"
    model.mkdir()
    forged.mkdir()
    real = _safetensors("weight", "F32")
    for name in ("a.safetensors", "b.safetensors"):
        (model / name).write_bytes(real)
    (forged / "b.safetensors").write_bytes(_safetensors("evil", "I32"))
    assert (forged / "b.safetensors").stat().st_size == len(real)
    answer = attack.open(_declared(model))
    assert answer.status_code == 201, answer.text
    session = answer.json()
    attack.send(session, 0, model / "a.safetensors")
    attack.send(session, 1, forged / "b.safetensors")
    done = attack.commit(session)
    if done.status_code == 201:
        files = {f.path: f for f in attack.registry.show("org/m@1").manifest.files}
        header = files["b.safetensors"].safetensors
        assert header is not None
        assert [t.name for t in header.tensors] == ["weight"]
        assert [t.dtype for t in header.tensors] == ["F32"]
        attack.registry.pull("org/m@1", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(model)
    else:
        assert done.status_code == 400, done.text


# -- parts racing the end of their session -------------------------------------------------------


@pytest.mark.parametrize("end", ["abandon", "expire"])
def test_a_part_racing_the_end_of_its_session_leaves_nothing_staged(
    attack: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """The session is discarded (abandoned, or expired by another request) while a part is
    being written: the part must not stay in the staging store, where no session would ever
    discard it (a client could fill the server's disk past every session's lifetime)."""
    from datetime import UTC, datetime, timedelta

    from registry.ops import uploadparts as parts_ops
    from registry.ops.uploads import discard_upload, expire_uploads

    data = b"z" * 3000
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open([{"path": "f.bin", "size": len(data), "digest": _digest(data)}]).json()
    ctx = attack.registry._context
    real = parts_ops.staging

    class Racing:
        def __init__(self, driver: Any) -> None:
            self.driver = driver

        def __getattr__(self, name: str) -> Any:
            return getattr(self.driver, name)

        def put_if_absent(self, name: str, chunks: Any) -> bool:
            if end == "abandon":
                discard_upload(ctx, session["id"])
            else:
                assert expire_uploads(ctx, now=datetime.now(UTC) + timedelta(days=2)) == 1
            return bool(self.driver.put_if_absent(name, chunks))

    monkeypatch.setattr(parts_ops, "staging", lambda ctx: Racing(real(ctx)))
    (data_part, _d) = sealed_parts(session, 0, tmp_path / "f.bin")[0]
    answer = attack.put(session, 0, 0, data_part)
    assert answer.status_code == 404, answer.text
    assert attack.staged(session) == []


# -- parts sent again to make the server work -----------------------------------------------------


def test_a_part_sent_again_unchanged_does_not_check_its_file_again(
    attack: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a file's parts have all arrived, every part sent again made the server decrypt
    and hash the whole file again: a client re-sending its smallest part made a server do the
    work of a whole file per request. A file checked from exactly these parts is not checked
    again."""
    from registry.ops import uploadparts as parts_ops

    data = bytes(range(256)) * 9000  # about 2.2 MiB: three parts
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open([{"path": "f.bin", "size": len(data), "digest": _digest(data)}]).json()
    checks = []
    real = parts_ops.check_file

    def counting(*args: Any, **kwargs: Any) -> Any:
        checks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(parts_ops, "check_file", counting)
    parts = sealed_parts(session, 0, tmp_path / "f.bin")
    assert len(parts) == 3
    attack.send(session, 0, tmp_path / "f.bin")
    assert len(checks) == 1
    for _ in range(3):
        assert attack.put(session, 0, 2, parts[2][0]).status_code == 204
    assert len(checks) == 1
    assert attack.commit(session).status_code == 201


# -- another token's session ---------------------------------------------------------------------


def test_another_tokens_session_is_indistinguishable_from_none(
    attack: Attack, tmp_path: Path
) -> None:
    data = b"secret weights"
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open(
        [{"path": "f.bin", "size": len(data), "digest": _digest(data)}], who="alice"
    ).json()
    (part, _d) = sealed_parts(session, 0, tmp_path / "f.bin")[0]
    nobody = {"id": "0" * 32}
    for target in (session, nobody):
        base = f"/v1/uploads/{target['id']}"
        answers = [
            attack.client.get(base, headers=attack.tokens["mallory"]),
            attack.put(target, 0, 0, part),
            attack.commit(target),
            attack.client.delete(base, headers=attack.tokens["mallory"]),
        ]
        for answer in answers:
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["message"] == f"no upload session {target['id']}"
            assert "key" not in answer.text
    # Even an admin token is not the session's owner.
    assert (
        attack.client.get(
            f"/v1/uploads/{session['id']}", headers=attack.tokens["admin"]
        ).status_code
        == 404
    )
    assert attack.staged(session) == []  # mallory's part was not kept
    attack.send(session, 0, tmp_path / "f.bin", who="alice")
    assert attack.commit(session, who="alice").status_code == 201


# -- odd numbers and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "part"),
    [(-1, 0), (0, -1), (1, 0), (0, 1), (10**30, 0), (0, 10**30), (0, 2**63)],
)
def test_odd_file_and_part_numbers_are_4xx(attack: Attack, index: int, part: int) -> None:
    data = b"q" * 100
    session = attack.open([{"path": "f.bin", "size": 100, "digest": _digest(data)}]).json()
    answer = attack.put(session, index, part, b"\0" * 132)
    assert 400 <= answer.status_code < 500, answer.text
    assert attack.staged(session) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"path": "f", "size": -1},
        {"path": "f", "size": 2**41},
        {"path": "f", "size": 2**70},
        {"path": "f", "size": 1.5},
        {"path": "f", "size": True},
        {"path": "f", "size": 0},  # an empty file must declare the empty digest
        {"path": "../f", "size": 1},
        {"path": "/etc/passwd", "size": 1},
        {"path": "a//b", "size": 1},
        {"path": "a\\b", "size": 1},
        {"path": "a/\u0000b", "size": 1},
        {"path": ".git/config", "size": 1},
        {"path": "x" * 5000, "size": 1},
        {"path": "model.sig", "size": 1},
        {"path": None, "size": 1},
    ],
)
def test_hostile_file_declarations_are_4xx_and_open_nothing(
    attack: Attack, spec: dict[str, Any]
) -> None:
    answer = attack.open([{**spec, "digest": _digest(b"x")}])
    assert 400 <= answer.status_code < 500, answer.text
    assert not (attack.home / "uploads" / "objects" / "sessions").exists() or not any(
        (attack.home / "uploads" / "objects" / "sessions").iterdir()
    )


def test_sizes_at_chunk_and_part_boundaries_push_and_pull_back(
    attack: Attack, tmp_path: Path
) -> None:
    per_part = MiB  # part_size / chunk_size chunks of CHUNK bytes
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, per_part - 1, per_part, per_part + 1, 2 * per_part]
    model = tmp_path / "model"
    model.mkdir()
    for number, size in enumerate(sizes):
        (model / f"f{number:02}.bin").write_bytes(
            bytes((number * 7 + i) % 251 for i in range(size))
        )
    # The same content twice, under another path: stored once, listed twice.
    (model / "copy.bin").write_bytes((model / "f04.bin").read_bytes())
    answer = attack.open(_declared(model))
    assert answer.status_code == 201, answer.text
    session = answer.json()
    for entry in session["files"]:
        attack.send(session, entry["index"], model / entry["path"])
    done = attack.commit(session)
    assert done.status_code == 201, done.text
    assert attack.staged(session) == []
    attack.registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)


# -- keys of content the token may not read ------------------------------------------------------


def test_a_pusher_is_not_given_the_data_key_of_a_model_it_may_not_read(
    attack: Attack, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "weights.bin").write_bytes(b"the weights of a model mallory may not read" * 100)
    attack.registry.push("team/secret", secret)
    stored = attack.registry.broker_keys("team/secret@1").keys
    # mallory (org/* only) knows, or guesses, the file's digest: a digest is not its content.
    declared = _declared(secret)
    answer = attack.open(declared)
    assert answer.status_code == 201, answer.text
    session = answer.json()
    issued = base64.b64decode(session["files"][0]["key"])
    assert issued != stored[("blob", declared[0]["digest"])]
    resumed = attack.client.get(f"/v1/uploads/{session['id']}", headers=attack.tokens["mallory"])
    assert base64.b64decode(resumed.json()["files"][0]["key"]) == issued  # the session's own
    # Mallory, who does hold the content, still pushes it: sealed under the session's key,
    # checked, and nothing of it stored again; the stored object keeps its own key.
    attack.send(session, 0, secret / "weights.bin")
    done = attack.commit(session)
    assert done.status_code == 201, done.text
    assert done.json()["uploaded_bytes"] == 0
    assert attack.registry.broker_keys("team/secret@1").keys == stored
    attack.registry.pull("org/m@1", tmp_path / "out")
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (secret / "weights.bin").read_bytes()
    # Each session has a key of its own: parts sealed under another session's are refused.
    other = attack.open(declared).json()
    assert other["files"][0]["key"] != session["files"][0]["key"]
    wrong = other | {"files": [other["files"][0] | {"key": session["files"][0]["key"]}]}
    attack.send(wrong, 0, secret / "weights.bin")
    refused = attack.commit(other)
    assert refused.status_code == 400, refused.text


def _victim(attack: Attack) -> str:
    """A pusher of team/* only, as `attack.tokens["team"]`: mallory (org/*) may not read what
    it pushes."""
    secret = attack.registry.create_token("victim", role=PUSHER, models=["team/*"])[1]
    attack.tokens["team"] = {"Authorization": f"Bearer {secret}"}
    return "team"


def _weights(folder: Path) -> Path:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"weights mallory may not read, pushed by a team" * 400)
    return folder


def test_a_pusher_is_not_given_the_key_of_content_another_push_has_in_flight(
    attack: Attack, tmp_path: Path
) -> None:
    """The digest of content a team is pushing right now (seen in a CI log): a session that
    declares it gets a key of its own, not the one the team's push seals under, and the key
    the stored object ends with is not one mallory was given."""
    team = _victim(attack)
    model = _weights(tmp_path / "team")
    declared = _declared(model)
    pushing = attack.open(declared, who=team, model="team/m").json()
    answer = attack.open(declared)
    assert answer.status_code == 201, answer.text
    given = answer.json()["files"][0]["key"]
    assert given != pushing["files"][0]["key"]
    attack.send(pushing, 0, model / "weights.bin", who=team)
    done = attack.commit(pushing, who=team)
    assert done.status_code == 201, done.text
    stored = attack.registry.broker_keys("team/m@1").keys[("blob", declared[0]["digest"])]
    assert stored != base64.b64decode(given)


@pytest.mark.parametrize("later", ["local push", "push through the API"])
def test_a_digest_declared_before_its_content_exists_does_not_choose_its_key(
    attack: Attack, tmp_path: Path, later: str
) -> None:
    """Mallory guesses the digest of content a team will push and opens a session for it first
    (never committed: mallory lacks the content). The team's push, local or through the API,
    must not seal the content under the key mallory holds."""
    model = _weights(tmp_path / "team")
    declared = _declared(model)
    answer = attack.open(declared)
    assert answer.status_code == 201, answer.text
    given = base64.b64decode(answer.json()["files"][0]["key"])
    if later == "local push":
        attack.registry.push("team/m", model)
    else:
        team = _victim(attack)
        pushing = attack.open(declared, who=team, model="team/m").json()
        attack.send(pushing, 0, model / "weights.bin", who=team)
        done = attack.commit(pushing, who=team)
        assert done.status_code == 201, done.text
    stored = attack.registry.broker_keys("team/m@1").keys[("blob", declared[0]["digest"])]
    assert stored != given
    attack.registry.pull("team/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)


@pytest.mark.parametrize("size", [0, 1, CHUNK, 2 * MiB + CHUNK + 1])
def test_content_whose_key_another_push_chose_first_is_sealed_again_under_that_key(
    attack: Attack, tmp_path: Path, size: int
) -> None:
    """Another push chose the content's key and stored its slot, then stopped before storing the
    content (or is still running): the session's commit seals the checked plaintext again, in
    memory, under that key, so the object has one key whoever stores it (sizes: empty, one
    byte, one chunk, several parts)."""
    from registry.blobstore import BLOB
    from registry.ops.copies import choose_key

    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.bin").write_bytes(bytes(range(251)) * (size // 251) + b"z" * (size % 251))
    declared = _declared(model)
    first = choose_key(
        attack.registry._context, BLOB, declared[0]["digest"], what="a", retired=frozenset()
    )
    session = attack.open(declared).json()
    assert base64.b64decode(session["files"][0]["key"]) != first.key
    attack.send(session, 0, model / "weights.bin")
    done = attack.commit(session)
    assert done.status_code == 201, done.text
    assert done.json()["uploaded_bytes"] == declared[0]["size"]
    assert attack.registry.broker_keys("org/m@1").keys[("blob", declared[0]["digest"])] == (
        first.key
    )
    attack.registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    assert attack.registry.verify("org/m@1").ok
    assert attack.staged(session) == []


# -- hostile safetensors, and a session held by its commit ---------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",  # no header length at all
        b"\x01\x02\x03",  # shorter than the header length
        struct.pack("<Q", 2**64 - 1) + b"{}",  # a length that would allocate everything
        struct.pack("<Q", 100 * MiB) + b"{}" + b" " * 5000,  # a length past the file's end
        struct.pack("<Q", 2) + b"[]",  # not an object
    ],
)
def test_hostile_safetensors_headers_are_refused_with_a_4xx_and_nothing_stored(
    attack: Attack, tmp_path: Path, content: bytes
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(content)
    session = attack.open(_declared(model)).json()
    attack.send(session, 0, model / "model.safetensors")
    before = sorted(p.name for p in (attack.home / "store").rglob("*") if "blobs" in p.as_posix())
    answer = attack.commit(session)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_model"
    after = sorted(p.name for p in (attack.home / "store").rglob("*") if "blobs" in p.as_posix())
    assert after == before


def test_a_session_held_by_its_commit_cannot_be_abandoned_or_sent_parts(
    attack: Attack, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    data = b"w" * 5000
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open([{"path": "f.bin", "size": len(data), "digest": _digest(data)}]).json()
    (part, _d) = sealed_parts(session, 0, tmp_path / "f.bin")[0]
    catalog = attack.registry._context.catalog
    now = datetime.now(UTC)
    assert catalog.claim_upload(session["id"], "c" * 32, at=now, stale=now - timedelta(minutes=1))
    gone = attack.client.delete(f"/v1/uploads/{session['id']}", headers=attack.tokens["mallory"])
    assert gone.status_code == 404 and "being committed" in gone.text
    assert attack.put(session, 0, 0, part).status_code == 404
    assert attack.staged(session) == []  # refused before its body was kept
    catalog.release_upload(session["id"], "c" * 32, at=now)
    attack.send(session, 0, tmp_path / "f.bin")
    assert attack.commit(session).status_code == 201
    assert catalog.upload(session["id"]) is None and attack.staged(session) == []


def test_a_session_idle_past_its_lifetime_is_gone_even_before_a_sweep(
    attack: Attack, tmp_path: Path
) -> None:
    """Idle sessions were swept only when some session was opened: until then an expired one
    still took parts, gave its keys and committed, and its parts stayed on the server's disk."""
    from datetime import UTC, datetime, timedelta

    data = b"v" * 5000
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open([{"path": "f.bin", "size": len(data), "digest": _digest(data)}]).json()
    (part, _d) = sealed_parts(session, 0, tmp_path / "f.bin")[0]
    assert attack.put(session, 0, 0, part).status_code == 204
    catalog = attack.registry._context.catalog
    catalog.touch_upload(session["id"], at=datetime.now(UTC) - timedelta(hours=25))
    state = attack.client.get(f"/v1/uploads/{session['id']}", headers=attack.tokens["mallory"])
    assert state.status_code == 404, state.text
    assert catalog.upload(session["id"]) is None and attack.staged(session) == []
    assert attack.put(session, 0, 0, part).status_code == 404
    assert attack.commit(session).status_code == 404
    assert attack.staged(session) == []


def test_staged_names_hold_no_part_of_a_files_path(attack: Attack, tmp_path: Path) -> None:
    """Parts are named by session, file index, part number and digest: a path (its folders,
    its name) never reaches the staging store's names."""
    model = tmp_path / "model"
    (model / "secret-folder").mkdir(parents=True)
    (model / "secret-folder" / "secret-name.bin").write_bytes(b"s" * 3000)
    session = attack.open(_declared(model)).json()
    attack.send(session, 0, model / "secret-folder" / "secret-name.bin")
    staged = attack.staged(session)
    assert len(staged) == 1
    every = [p.as_posix() for p in (attack.home / "uploads").rglob("*")]
    assert not [name for name in every if "secret" in name]


# -- one token filling the staging folder ---------------------------------------------------------


def _contents(*sizes: int, seed: str) -> list[dict[str, Any]]:
    return [
        {"path": f"{seed}-{index}.bin", "size": size, "digest": _digest(f"{seed}{index}".encode())}
        for index, size in enumerate(sizes)
    ]


def _slots(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store").rglob("*") if p.is_file() and "/slots/" in str(p))


def test_a_token_cannot_stage_past_its_allowance_while_other_tokens_still_can(
    attack_any_catalog: Attack,
) -> None:
    """`[api] staging_bytes_per_token`: one token's open pushes cannot hold more of the staging
    folder than that; a push past it gets a 413 that says what holds the room, opens nothing
    and stores no key, and fits again once the token's other push ends."""
    attack = attack_any_catalog
    api_settings(attack.registry, staging_bytes_per_token=5000)
    first = _contents(1200, 800, seed="a")
    first.append({**first[0], "path": "copy-of-a0.bin"})  # a copy is staged too: it counts
    held = attack.open(first)
    assert held.status_code == 201, held.text
    catalog = attack.registry._context.catalog
    owner = catalog.upload(held.json()["id"]).owner  # type: ignore[union-attr]
    assert catalog.staged_bytes(owner) == 1307 + 907 + 1307  # sealed: header and tag each
    slots = _slots(attack.home)

    refused = attack.open(_contents(1500, seed="b"))

    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert (
        "stages 1,607 bytes (its files sealed) and the token's open pushes hold 3,521 of the "
        "5,000" in (error["message"])
    )
    assert "commit or abandon the token's other pushes" in error["hint"]
    assert catalog.staged_bytes(owner) == 3521  # nothing opened
    assert _slots(attack.home) == slots  # refused before any key was chosen
    opened = [e for e in attack.registry.audit_events() if e.action == "upload-open"]
    assert len(opened) == 1
    # Another token's allowance is its own.
    assert attack.open(_contents(1500, seed="b"), who="alice").status_code == 201
    # The token's other push ends: the room is its again.
    gone = attack.client.delete(
        f"/v1/uploads/{held.json()['id']}", headers=attack.tokens["mallory"]
    )
    assert gone.status_code == 204, gone.text
    assert attack.open(_contents(1500, seed="b")).status_code == 201


def test_a_push_larger_than_the_allowance_itself_is_refused_with_what_to_do(
    attack: Attack,
) -> None:
    api_settings(attack.registry, staging_bytes_per_token=3000)
    refused = attack.open(_contents(2000, 1001, seed="c"))
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (
        "stages 3,215 bytes (its files sealed), more than the 3,000 bytes a token may"
        in (error["message"])
    )
    assert "raise [api] staging_bytes_per_token" in error["hint"]
    api_settings(attack.registry, staging_bytes_per_token=0)  # 0: no allowance but the room
    assert attack.open(_contents(2000, 1001, seed="c")).status_code == 201


def test_two_pushes_opened_at_once_by_one_token_never_both_pass_its_allowance(
    attack_any_catalog: Attack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both are past the first check before either is opened (a barrier holds them there):
    the check once their rows are in sees both, so at most one stays open, and the token never
    holds more than its allowance."""
    import threading

    from registry.errors import QuotaExceededError
    from registry.ops import uploads as upload_ops

    attack = attack_any_catalog
    api_settings(attack.registry, staging_bytes_per_token=3000)
    record, _secret = attack.registry.create_token("twins", role=PUSHER, models=["org/*"])
    view = attack.registry.acting_as(record)
    barrier = threading.Barrier(2, timeout=30)
    real = upload_ops._issue_keys

    def issue_keys(ctx: Any, session_id: str, files: Any) -> Any:
        barrier.wait()  # both have passed the check before opening
        return real(ctx, session_id, files)

    monkeypatch.setattr(upload_ops, "_issue_keys", issue_keys)
    outcomes: list[object] = []

    def open_one(seed: str) -> None:
        files = [DeclaredFile(**entry) for entry in _contents(2000, seed=seed)]
        try:
            outcomes.append(view.open_upload("org/m", files))
        except QuotaExceededError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=open_one, args=(seed,)) for seed in ("d", "e")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 2
    assert any(isinstance(outcome, QuotaExceededError) for outcome in outcomes)
    catalog = attack.registry._context.catalog
    assert catalog.staged_bytes(f"token:twins:{record.id}") <= 3000


def test_a_part_sent_again_during_a_commit_leaves_the_part_the_commit_reads(
    attack: Attack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other bytes for a part already sent, written just as a commit takes the session: a 404
    (send it again), and the part the commit may be reading is still there. The part sent last
    counts once the commit hands the session back."""
    from datetime import UTC, datetime, timedelta

    from registry.ops import uploadparts

    data = b"v" * 9000
    (tmp_path / "f.bin").write_bytes(data)
    session = attack.open([{"path": "f.bin", "size": len(data), "digest": _digest(data)}]).json()
    attack.send(session, 0, tmp_path / "f.bin")
    staged = attack.staged(session)
    assert len(staged) == 1
    catalog = attack.registry._context.catalog
    now = datetime.now(UTC)
    real_staging = uploadparts.staging

    def staging(ctx: Any) -> Any:
        driver = real_staging(ctx)
        real_put = driver.put_if_absent

        def put_if_absent(name: str, chunks: Any) -> bool:
            wrote = real_put(name, chunks)
            # A commit takes the session just after the part is written.
            assert catalog.claim_upload(
                session["id"], "c" * 32, at=now, stale=now - timedelta(minutes=1)
            )
            return wrote

        driver.put_if_absent = put_if_absent  # type: ignore[method-assign]
        return driver

    monkeypatch.setattr(uploadparts, "staging", staging)
    other = bytes(len(staged[0].read_bytes()))  # the right length, other bytes
    answer = attack.put(session, 0, 0, other)
    assert answer.status_code == 404 and "being committed" in answer.text
    assert staged[0].exists(), "the part a commit may be reading was deleted"
    monkeypatch.setattr(uploadparts, "staging", real_staging)
    catalog.release_upload(session["id"], "c" * 32, at=now)
    refused = attack.commit(session)  # the part sent last counts: not sealed as issued
    assert refused.status_code == 400, refused.text
    attack.send(session, 0, tmp_path / "f.bin")
    assert attack.commit(session).status_code == 201
    assert attack.staged(session) == []
