"""Pushes through the REST API are sealed by the client: no plaintext byte is ever at rest on the
server (its folders and the store are scanned while a push runs), a client whose ciphertext does
not match what it declared is refused with nothing stored, a part the staging store lost is asked
for again, and sessions live in the catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import pytest
from litestar.testing import TestClient

from registry.api.app import create_app
from registry.client import RemoteRegistry
from registry.digest import hash_file
from registry.service import ADMIN, PUSHER, Registry
from registry.testing.models import make_model
from tests.apikit import api_settings, sealed_parts
from tests.conftest import tree
from tests.test_api_cli import LiveServer

MiB = 1024 * 1024


@dataclass
class Pusher:
    client: TestClient[Any]
    registry: Registry
    headers: dict[str, str]
    home: Path


@pytest.fixture
def pusher(home: Path, catalog_url: str | None) -> Iterator[Pusher]:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        api_settings(registry, part_size=MiB, chunk_size=256 * 1024)
        secret = registry.create_token("ci", role=PUSHER, models=["org/*"])[1]
        with TestClient(create_app(registry)) as client:
            yield Pusher(client, registry, {"Authorization": f"Bearer {secret}"}, home)


def _files(model: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(model).as_posix(), "size": p.stat().st_size, "digest": hash_file(p)}
        for p in sorted(model.rglob("*"))
        if p.is_file()
    ]


def _open(api: Pusher, model: Path, name: str = "org/m") -> dict[str, Any]:
    answer = api.client.post(
        "/v1/uploads", json={"model": name, "files": _files(model)}, headers=api.headers
    )
    assert answer.status_code == 201, answer.text
    session: dict[str, Any] = answer.json()
    return session


def _send(api: Pusher, session: dict[str, Any], index: int, part: int, data: bytes) -> None:
    digest = "blake3:" + __import__("blake3").blake3(data).hexdigest()
    answer = api.client.put(
        f"/v1/uploads/{session['id']}/files/{index}/parts/{part}",
        content=data,
        headers={**api.headers, "X-Part-Digest": digest},
    )
    assert answer.status_code == 204, answer.text


def _send_all(api: Pusher, session: dict[str, Any], model: Path) -> None:
    for entry in session["files"]:
        for part, (data, _digest) in enumerate(
            sealed_parts(session, entry["index"], model / entry["path"])
        ):
            _send(api, session, entry["index"], part, data)


def _stored(home: Path) -> set[str]:
    """The data objects (not key slots) in the home's store."""
    return {
        p.relative_to(home).as_posix()
        for p in (home / "store").rglob("*")
        if p.is_file() and "/blobs/" in p.as_posix()
    }


def _commit(api: Pusher, session: dict[str, Any]) -> Any:
    return api.client.post(f"/v1/uploads/{session['id']}/commit", headers=api.headers)


# -- no plaintext at rest -------------------------------------------------------------------------


def _samples(model: Path) -> list[bytes]:
    """Pieces of every file's plaintext that no ciphertext could hold by chance: its start (a
    safetensors header, a config), its middle and its end."""
    found = []
    for path in sorted(model.rglob("*")):
        if path.is_file() and path.stat().st_size >= 48:
            data = path.read_bytes()
            found += [data[:48], data[len(data) // 2 : len(data) // 2 + 48], data[-48:]]
    return found


def test_no_plaintext_byte_is_at_rest_on_the_server_during_a_push(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "server-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the server's temp files, scanned
    model = make_model(tmp_path / "model", shards=3, shard_size=3 * MiB, seed=21)
    samples = _samples(model)
    Registry.init(home)
    with Registry.open(home) as registry:
        token = registry.create_token("ci", role=ADMIN, models=["*"])[1]
        staging = tmp_path / "staging"
        with LiveServer(registry, staging) as server:
            folders = [home, staging, scratch]
            leaks: list[str] = []
            scans = 0
            done = threading.Event()

            def scan() -> None:
                nonlocal scans
                while not done.is_set():
                    for folder in folders:
                        try:
                            paths = list(folder.rglob("*"))
                        except OSError:
                            continue  # a folder removed while listed (a session discarded)
                        for path in paths:
                            try:
                                data = path.read_bytes() if path.is_file() else b""
                            except OSError:
                                continue  # gone meanwhile (a part moved into place)
                            leaks.extend(
                                f"{path} holds plaintext" for sample in samples if sample in data
                            )
                    scans += 1

            scanner = threading.Thread(target=scan)
            scanner.start()
            try:
                with RemoteRegistry(server.url, token) as remote:
                    result = remote.push("org/m", model)
            finally:
                done.set()
                scanner.join(60)
            assert result.created and scans >= 2
            assert not leaks, leaks[:5]
            # What was stored is what was pushed: pulled back directly, byte for byte.
            registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    assert hashlib.sha256(b"".join(samples)).hexdigest()  # the samples were real bytes


# -- a client whose ciphertext does not match what it declared ----------------------------------


def test_ciphertext_that_does_not_match_the_declared_digest_is_refused(
    pusher: Pusher, tmp_path: Path
) -> None:
    model = make_model(tmp_path / "model", shards=1, shard_size=MiB, seed=3)
    other = make_model(tmp_path / "other", shards=1, shard_size=MiB, seed=4)
    session = _open(pusher, model)
    before = _stored(pusher.home)
    shard = next(e for e in session["files"] if e["path"].endswith(".safetensors"))
    for entry in session["files"]:
        # The shard's bytes are another file of the same size, sealed under the declared digest.
        source = other if entry is shard else model
        for part, (data, _d) in enumerate(
            sealed_parts(session, entry["index"], source / entry["path"])
        ):
            _send(pusher, session, entry["index"], part, data)
    answer = _commit(pusher, session)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_input"
    assert "not the" in answer.json()["error"]["message"]
    assert _stored(pusher.home) == before  # nothing published
    assert "org/m" not in {m.name for m in pusher.registry.models()}
    scraped = pusher.client.get("/metrics").text
    assert "model_registry_integrity_failures_total 1.0" in scraped
    # The session is handed back: the client may send the right bytes and commit.
    _send_all(pusher, session, model)
    done = _commit(pusher, session)
    assert done.status_code == 201, done.text


@pytest.mark.parametrize("tamper", ["own-salt", "flipped-byte", "wrong-key"])
def test_parts_not_sealed_as_issued_are_refused(
    pusher: Pusher, tmp_path: Path, tamper: str
) -> None:
    import os

    model = make_model(tmp_path / "model", shards=1, shard_size=MiB, seed=5)
    session = _open(pusher, model)
    before = _stored(pusher.home)
    for entry in session["files"]:
        issued = dict(entry)
        if tamper == "own-salt":
            issued["salt"] = os.urandom(32).hex()
        if tamper == "wrong-key":
            issued["key"] = base64.b64encode(os.urandom(32)).decode()
        changed = {**session, "files": [issued if e is entry else e for e in session["files"]]}
        for part, (data, _d) in enumerate(
            sealed_parts(changed, entry["index"], model / entry["path"])
        ):
            if tamper == "flipped-byte" and part == 0:
                at = min(200, len(data) - 1)  # past the header: a chunk or its tag
                data = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
            _send(pusher, session, entry["index"], part, data)
    answer = _commit(pusher, session)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_input"
    assert _stored(pusher.home) == before
    assert "org/m" not in {m.name for m in pusher.registry.models()}


def test_a_hostile_safetensors_header_is_refused_before_anything_is_stored(
    pusher: Pusher, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    header = b'{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,999999]}}'
    (bad / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    session = _open(pusher, bad)
    before = _stored(pusher.home)
    _send_all(pusher, session, bad)
    answer = _commit(pusher, session)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_model"
    assert _stored(pusher.home) == before


# -- the staging store, and sessions in the catalog ---------------------------------------------


def test_a_part_the_staging_store_lost_is_asked_for_again(pusher: Pusher, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=1, shard_size=3 * MiB, seed=6)
    session = _open(pusher, model)
    shard = next(e for e in session["files"] if e["path"].endswith(".safetensors"))
    # Sent in the order that leaves the shard's last part for the end (so no early check).
    for entry in session["files"]:
        if entry is not shard:
            for part, (data, _d) in enumerate(
                sealed_parts(session, entry["index"], model / entry["path"])
            ):
                _send(pusher, session, entry["index"], part, data)
    sealed = sealed_parts(session, shard["index"], model / shard["path"])
    assert len(sealed) >= 3
    for part, (data, _d) in enumerate(sealed):
        _send(pusher, session, shard["index"], part, data)
    staged = pusher.home / "uploads" / "objects" / "sessions" / session["id"]
    # A crash of the unsynced staging store: part 1 gone, part 2 cut short.
    next((staged / str(shard["index"])).glob("1-*")).unlink()
    cut = next((staged / str(shard["index"])).glob("2-*"))
    cut.chmod(0o600)
    cut.write_bytes(cut.read_bytes()[:1000])
    state = pusher.client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers).json()
    received = next(e for e in state["files"] if e["index"] == shard["index"])["received"]
    assert 1 not in received and 0 in received and 2 in received
    missing = _commit(pusher, session)
    assert missing.status_code == 400 and "not received yet" in missing.text, missing.text
    _send(pusher, session, shard["index"], 1, sealed[1][0])
    lost = _commit(pusher, session)
    assert lost.status_code == 400 and "lost by the server" in lost.text, lost.text
    state = pusher.client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers).json()
    received = next(e for e in state["files"] if e["index"] == shard["index"])["received"]
    assert 2 not in received  # forgotten, to be sent again
    _send(pusher, session, shard["index"], 2, sealed[2][0])
    done = _commit(pusher, session)
    assert done.status_code == 201, done.text
    assert not staged.exists()
    pusher.registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)


def test_sessions_are_the_catalogs_and_expire(pusher: Pusher, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from registry.ops.uploads import expire_uploads

    model = make_model(tmp_path / "model", shards=1, shard_size=MiB, seed=7)
    session = _open(pusher, model)
    _send_all(pusher, session, model)
    catalog = pusher.registry._context.catalog
    record = catalog.upload(session["id"])
    state = pusher.client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers).json()
    assert record is not None
    assert sum(len(f["received"]) for f in state["files"]) == sum(
        f["parts"] for f in session["files"]
    )
    # The keys are never kept: only the salt and nonce prefix, which are not secret.
    assert all(f.salt and f.nonce_prefix for f in record.files)
    later = datetime.now(UTC) + timedelta(hours=25)
    assert expire_uploads(pusher.registry._context, now=later) == 1
    assert catalog.upload(session["id"]) is None
    staged = pusher.home / "uploads" / "objects" / "sessions" / session["id"]
    assert not staged.exists()
    gone = pusher.client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers)
    assert gone.status_code == 404


def test_a_file_is_checked_when_its_last_part_arrives_and_a_stale_check_is_not_trusted(
    pusher: Pusher, tmp_path: Path
) -> None:
    model = make_model(tmp_path / "model", shards=1, shard_size=3 * MiB, seed=8)
    other = make_model(tmp_path / "other", shards=1, shard_size=3 * MiB, seed=9)
    session = _open(pusher, model)
    catalog = pusher.registry._context.catalog
    shard = next(e for e in session["files"] if e["path"].endswith(".safetensors"))
    sealed = sealed_parts(session, shard["index"], model / shard["path"])
    for part, (data, _digest) in enumerate(sealed[:-1]):
        _send(pusher, session, shard["index"], part, data)
    record = catalog.upload(session["id"])
    assert record is not None and record.files[shard["index"]].checked is None  # not whole yet
    _send(pusher, session, shard["index"], len(sealed) - 1, sealed[-1][0])
    record = catalog.upload(session["id"])
    assert record is not None
    checked = record.files[shard["index"]].checked
    assert checked is not None and len(checked.sha256) == 64
    assert hashlib.sha256((model / shard["path"]).read_bytes()).hexdigest() == checked.sha256
    # Part 1 sent again with other bytes (sealed as issued, but of other content): the check
    # was of other parts, so the commit checks again, and refuses.
    wrong = sealed_parts(session, shard["index"], other / shard["path"])[1][0]
    _send(pusher, session, shard["index"], 1, wrong)
    for entry in session["files"]:
        if entry is not shard:
            for part, (data, _d) in enumerate(
                sealed_parts(session, entry["index"], model / entry["path"])
            ):
                _send(pusher, session, entry["index"], part, data)
    refused = _commit(pusher, session)
    assert refused.status_code == 400 and "not the" in refused.text, refused.text
    assert "org/m" not in {m.name for m in pusher.registry.models()}
    # The right part again: checked again, and the commit takes it.
    _send(pusher, session, shard["index"], 1, sealed[1][0])
    done = _commit(pusher, session)
    assert done.status_code == 201, done.text
    actions = [e.action for e in pusher.registry.audit_events(limit=100)]
    assert "upload-open" in actions and "push" in actions


def test_a_commit_whose_process_died_is_taken_over_once_its_claim_is_stale(
    pusher: Pusher, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    model = make_model(tmp_path / "model", shards=1, shard_size=MiB, seed=10)
    session = _open(pusher, model)
    _send_all(pusher, session, model)
    catalog = pusher.registry._context.catalog
    now = datetime.now(UTC)
    # A live commit (renewed within the minute) holds the session...
    assert catalog.claim_upload(session["id"], "a" * 32, at=now, stale=now - timedelta(minutes=1))
    busy = _commit(pusher, session)
    assert busy.status_code == 404 and "being committed" in busy.text
    # ...one whose process died stopped renewing: a minute later the next commit takes over.
    catalog.renew_upload_claim(session["id"], "a" * 32, at=now - timedelta(minutes=2))
    done = _commit(pusher, session)
    assert done.status_code == 201, done.text
    assert catalog.upload(session["id"]) is None


def test_a_push_the_staging_folder_has_no_room_for_is_refused_before_anything_is_opened(
    pusher: Pusher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from registry.ops import uploads as upload_ops

    model = make_model(tmp_path / "model", shards=1, shard_size=MiB, seed=11)
    slots = pusher.home / "store" / "objects" / "slots"
    before = sorted(slots.rglob("*")) if slots.exists() else []
    real = shutil.disk_usage

    def nearly_full(path: object) -> object:
        return real(path)._replace(free=MiB // 2)  # type: ignore[arg-type]

    monkeypatch.setattr(upload_ops.shutil, "disk_usage", nearly_full)
    answer = pusher.client.post(
        "/v1/uploads", json={"model": "org/m", "files": _files(model)}, headers=pusher.headers
    )
    assert answer.status_code == 503, answer.text
    assert "staging folder has" in answer.json()["error"]["message"]
    assert (
        pusher.registry._context.catalog.idle_uploads(
            __import__("datetime").datetime.max.replace(tzinfo=__import__("datetime").UTC)
        )
        == []
    )
    assert (sorted(slots.rglob("*")) if slots.exists() else []) == before  # no key slot stored
    monkeypatch.setattr(upload_ops.shutil, "disk_usage", real)
    assert _open(pusher, model)["id"]


# -- many files: their keys chosen together ------------------------------------------------------


def _counting_peak(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> dict[str, int]:
    """Wrap `module.name` so that the returned counts say how many of its calls ran at once."""
    real = getattr(module, name)
    lock = threading.Lock()
    counts = {"now": 0, "peak": 0, "calls": 0}

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            counts["now"] += 1
            counts["calls"] += 1
            counts["peak"] = max(counts["peak"], counts["now"])
        try:
            time.sleep(0.02)  # a KMS call and a key slot's PUT take this long
            return real(*args, **kwargs)
        finally:
            with lock:
                counts["now"] -= 1

    monkeypatch.setattr(module, name, counted)
    return counts


def test_the_session_keys_of_many_files_are_issued_and_given_again_together(
    pusher: Pusher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session of many files does not wait for each key in turn where each is a KMS request:
    they are wrapped together at the opening and unwrapped together when given again, one per
    distinct content, the same keys."""
    from registry.ops import uploads as upload_ops

    stored = make_model(tmp_path / "stored", shards=1, shard_size=4096, seed=21)
    pusher.registry.push("org/stored", stored)
    shard = next(p for p in _files(stored) if p["path"].endswith(".safetensors"))
    files = [
        {"path": f"f{index:02d}.bin", "size": 1 + index, "digest": _digest_of(bytes(index + 1))}
        for index in range(30)
    ]
    files.append({**files[3], "path": "same-as-f03.bin"})
    files.append({**shard, "path": "stored.safetensors"})  # stored already: the session's key
    # Keys wrapped by a KMS: each a request worth overlapping (with a key file, one at a time).
    context = pusher.registry._context
    assert upload_ops.keys_at_once(context) == 1
    monkeypatch.setattr(context.store.keys, "latency_bound", True)
    assert upload_ops.keys_at_once(context) == upload_ops.KEY_REQUESTS
    wraps = _counting_peak(monkeypatch, context.store.keys, "wrap")
    unwraps = _counting_peak(monkeypatch, context.store.keys, "unwrap")

    answer = pusher.client.post(
        "/v1/uploads", json={"model": "org/m", "files": files}, headers=pusher.headers
    )

    assert answer.status_code == 201, answer.text
    session = answer.json()
    assert wraps["calls"] == 31  # one per distinct content, not per file
    assert wraps["peak"] > 1, "the keys were wrapped one after another"
    issued = {entry["path"]: entry["key"] for entry in session["files"]}
    assert issued["same-as-f03.bin"] == issued["f03.bin"]
    assert len(set(issued.values())) == 31
    again = pusher.client.get(f"/v1/uploads/{session['id']}", headers=pusher.headers)
    assert again.status_code == 200, again.text
    assert {entry["path"]: entry["key"] for entry in again.json()["files"]} == issued
    assert unwraps["calls"] == 31
    assert unwraps["peak"] > 1, "the keys were unwrapped one after another"


def test_a_session_key_the_kms_cannot_wrap_opens_nothing(
    pusher: Pusher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One key of many that the KMS does not wrap fails the open with a 503 that says so, and
    leaves no session."""
    from registry.errors import KmsUnreachableError

    keys = pusher.registry._context.store.keys
    monkeypatch.setattr(keys, "latency_bound", True)
    real = keys.wrap
    failing = _digest_of(bytes(8))

    def wrap(data_key: bytes, *, context: Any) -> Any:
        if context["digest"] == failing:
            raise KmsUnreachableError(
                "kms.eu-west-1.amazonaws.com: read timed out (a test)", region="eu-west-1"
            )
        return real(data_key, context=context)

    monkeypatch.setattr(keys, "wrap", wrap)
    files = [
        {"path": f"f{index:02d}.bin", "size": 1 + index, "digest": _digest_of(bytes(index + 1))}
        for index in range(20)
    ]
    answer = pusher.client.post(
        "/v1/uploads", json={"model": "org/m", "files": files}, headers=pusher.headers
    )
    assert answer.status_code == 503, answer.text
    assert "kms.eu-west-1.amazonaws.com: read timed out" in answer.json()["error"]["message"]
    catalog = pusher.registry._context.catalog
    assert catalog.idle_uploads(datetime.max.replace(tzinfo=UTC)) == []
    assert not [e for e in pusher.registry.audit_events() if e.action == "upload-open"]


def _digest_of(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def test_a_push_through_the_api_reaches_every_region_and_reads_from_either(
    home: Path, tmp_path: Path
) -> None:
    """Two regions: the session's key becomes the object's slot in every region, each copy is
    the client's ciphertext, and with one region's objects gone the version still pulls."""
    import shutil

    regions = [tmp_path / "region-a", tmp_path / "region-b"]
    Registry.init(home, store=[str(region) for region in regions])
    model = make_model(tmp_path / "model", shards=2, shard_size=MiB, seed=51)
    with Registry.open(home) as registry:
        api_settings(registry, part_size=MiB, chunk_size=256 * 1024)
        secret = registry.create_token("ci", role=PUSHER, models=["org/*"])[1]
        with TestClient(create_app(registry)) as client:
            pusher = Pusher(client, registry, {"Authorization": f"Bearer {secret}"}, home)
            session = _open(pusher, model)
            _send_all(pusher, session, model)
            done = _commit(pusher, session)
            assert done.status_code == 201, done.text
            assert done.json()["pending_regions"] == []
        assert registry.verify("org/m@1", read_data=True).ok
        files = len(session["files"])
        for region in regions:  # a slot of every file's object in each region
            assert len(list((region / "objects" / "slots").rglob("blob-*"))) == files
    shutil.rmtree(regions[0] / "objects" / "blobs")
    with Registry.open(home) as registry:
        registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
