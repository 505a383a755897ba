"""The REST API under hostile input (issue 18): fuzzed headers and query parameters that never
yield a 5xx, an upload part racing a failed commit, a chunked part refused as it streams, a
stored copy with bytes appended refused by the server, a key broker answer that lacks a key,
private modes whatever the umask, forwarded addresses believed only from configured proxies,
and an audit chain rewritten in the catalog that the stores' journal exposes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import RequestFactory, TestClient
from sqlalchemy import select, text

from registry.api.app import create_app
from registry.api.common import client_of, parse_range
from registry.catalog.audit import GENESIS, audit_hash
from registry.catalog.models import AuditEvent
from registry.config import ApiSettings
from registry.digest import hash_file
from registry.errors import IntegrityError, InvalidInputError
from registry.service import ADMIN, PUSHER, READER, Registry
from registry.testing.models import make_model
from tests.apikit import api_settings, sealed_parts


@dataclass
class Api:
    client: TestClient[Any]
    registry: Registry
    tokens: dict[str, str]
    model: Path
    staging: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def api(home: Path, tmp_path: Path) -> Iterator[Api]:
    Registry.init(home)
    model = make_model(tmp_path / "model", shards=2, shard_size=50_000, seed=1)
    with Registry.open(home) as registry:
        registry.push("org/llama", model)
        tokens = {
            role: registry.create_token(role, role=role, models=["*"])[1]
            for role in (READER, PUSHER, ADMIN)
        }
        staging = tmp_path / "staging"
        with TestClient(create_app(registry)) as client:
            yield Api(client, registry, tokens, model, staging)


def _files(model: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(model).as_posix(), "size": p.stat().st_size, "digest": hash_file(p)}
        for p in sorted(model.rglob("*"))
        if p.is_file()
    ]


def _digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


# -- no input yields a 5xx ----------------------------------------------------------------------

EDGES = [
    "bytes=\u00b2-5",  # a superscript: isdigit() says yes, int() says no
    "bytes=\u0661-\u0665",  # Arabic-Indic digits
    "bytes=0-99999999999999999999999999",
    "0001-01-01T00:00:00+01:00",  # no UTC form: before year 1
    "9999-12-31T23:59:59-01:00",  # no UTC form: after year 9999
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "-1",
    "99999999999999999999999",
    "\u00b9",
    "",
    " ",
    "\x00",
    "org/llama@1",
    "org/llama:prod",
    "../../etc/passwd",
]
_TEXT = st.one_of(
    st.sampled_from(EDGES),
    st.text(max_size=40),
    st.from_regex(r"bytes=[0-9\u00b2\u0661]{0,6}-[0-9\u00b2\u0661]{0,6}", fullmatch=True),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
)
_HEADER = _TEXT.map(lambda s: s.encode("latin-1", "replace").decode("latin-1"))
# (method, path): GET routes with query parameters and headers a client controls.
_ROUTES = [
    ("GET", "/v1/blob"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/history"),
    ("GET", "/v1/versions"),
    ("GET", "/v1/version"),
    ("GET", "/v1/retention/plan"),
    ("GET", "/v1/aliases"),
    ("GET", "/v1/models"),
]
_PARAMS = ["since", "limit", "ref", "path", "model", "at", "alias", "expired"]


def test_fuzzed_headers_and_query_parameters_never_yield_a_server_error(api: Api) -> None:
    """Beside schemathesis (which follows the schema), hypothesis sends what the schema does
    not describe: Range, Authorization, X-Forwarded-For, Content-Length and Transfer-Encoding
    headers and query parameters of any text, at the edges of what they parse."""
    failures: list[str] = []
    admin = api.auth(ADMIN)["Authorization"]

    @given(
        route=st.sampled_from(_ROUTES),
        params=st.dictionaries(st.sampled_from(_PARAMS), _TEXT, max_size=4),
        headers=st.fixed_dictionaries(
            {},
            optional={
                "Range": _HEADER,
                "Authorization": st.one_of(st.just(admin), _HEADER),
                "X-Forwarded-For": _HEADER,
                "X-Part-Digest": _HEADER,
            },
        ),
    )
    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def probe(route: tuple[str, str], params: dict[str, str], headers: dict[str, str]) -> None:
        headers.setdefault("Authorization", admin)
        method, path = route
        raw = {k: v.encode("latin-1") for k, v in headers.items()}  # any octets, as sent
        answer = api.client.request(method, path, params=params, headers=raw)
        if answer.status_code >= 500 and answer.status_code not in (502, 503):
            failures.append(f"{method} {path} {params} {headers}: {answer.text[:200]}")
        elif answer.status_code >= 500:
            # 502/503 are the stores' and integrity answers, never a client's input's.
            failures.append(f"{method} {path} {params} {headers}: {answer.status_code}")

    probe()
    # The edges, each once, whatever hypothesis chose.
    for edge in EDGES:
        for name in _PARAMS:
            answer = api.client.get(
                "/v1/audit" if name in ("since", "limit") else "/v1/history",
                params={name: edge, **({} if name in ("since", "limit") else {"model": "a/b"})},
                headers=api.auth(ADMIN),
            )
            if answer.status_code >= 500:
                failures.append(f"{name}={edge!r}: {answer.text[:200]}")
        answer = api.client.get(
            "/v1/blob",
            params={"ref": "org/llama@1"},
            headers={**api.auth(ADMIN), "Range": edge.encode()},
        )
        if answer.status_code >= 500:
            failures.append(f"Range {edge!r}: {answer.text[:200]}")
    assert not failures, failures[:5]


def test_range_and_times_at_the_edges_are_400(api: Api) -> None:
    superscript = "bytes=\u00b2-5".encode()
    answer = api.client.get(
        "/v1/blob", params={"ref": "org/llama@1"}, headers={**api.auth(ADMIN), "Range": superscript}
    )
    assert answer.status_code == 400, answer.text
    for edge in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        answer = api.client.get("/v1/audit", params={"since": edge}, headers=api.auth(ADMIN))
        assert answer.status_code == 400, (edge, answer.text)
        assert answer.json()["error"]["code"] == "invalid_input"
    for sent in ("0-\u00b2", "\u0661-\u0665"):
        with pytest.raises(InvalidInputError):
            parse_range(f"bytes={sent}", 100)


def test_odd_length_and_transfer_headers_on_upload_parts_are_4xx(api: Api) -> None:
    session = api.client.post(
        "/v1/uploads",
        json={"model": "org/llama", "files": _files(api.model)},
        headers=api.auth(PUSHER),
    ).json()
    part = f"/v1/uploads/{session['id']}/files/0/parts/0"
    for headers in (
        {"Content-Length": "\u00b2".encode().decode("latin-1")},
        {"Content-Length": "-1"},
        {"Transfer-Encoding": "gzip"},
    ):
        answer = _raw_put(api, part, headers, [b"abc"])
        assert 400 <= answer[0] < 500, (headers, answer)


# -- upload sessions ----------------------------------------------------------------------------


def _raw_put(
    api: Api, path: str, headers: dict[str, str], chunks: Any, *, pulled: list[int] | None = None
) -> tuple[int, bytes]:
    """A PUT sent straight to the ASGI app, its body in `chunks` (an iterable), as a chunked
    request would arrive; `pulled` counts the body messages the app asked for."""
    app = api.client.app
    raw = [(b"authorization", api.auth(PUSHER)["Authorization"].encode())]
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    source = iter(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        chunk = next(source, None)
        if pulled is not None:
            pulled.append(1)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_a_chunked_part_is_refused_as_it_streams_past_the_part_size(api: Api) -> None:
    empty = _digest(b"")
    one = {"path": "one", "size": 1, "digest": _digest(b"x")}
    session = api.client.post(
        "/v1/uploads",
        json={"model": "org/tiny", "files": [one, {"path": "e", "size": 0, "digest": empty}]},
        headers=api.auth(PUSHER),
    ).json()
    pulled: list[int] = []
    megabyte = b"y" * (1 << 20)
    status, body = _raw_put(
        api,
        f"/v1/uploads/{session['id']}/files/0/parts/0",
        {"X-Part-Digest": _digest(b"x")},
        (megabyte for _ in range(60)),  # 60 MiB for a 1-byte file, without a Content-Length
        pulled=pulled,
    )
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "too_large"
    assert len(pulled) <= 2  # refused at the first chunk past one byte, not after 60 MiB


def test_a_part_racing_a_commit_is_refused_and_the_session_survives(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit claims the session while a part is being stored (another process, say): the
    client is told so (404; the commit checks whatever it listed), and once the commit hands
    the session back the part sent again is taken, once."""
    from registry.ops import uploadparts as parts_ops

    pusher = api.auth(PUSHER)
    files = _files(api.model)
    session = api.client.post(
        "/v1/uploads", json={"model": "org/llama", "files": files}, headers=pusher
    ).json()
    catalog = api.registry._context.catalog
    real = parts_ops.staging
    now = datetime.now(UTC)

    class Racing:
        def __init__(self, driver: Any) -> None:
            self.driver = driver

        def __getattr__(self, name: str) -> Any:
            return getattr(self.driver, name)

        def put_if_absent(self, name: str, chunks: Any) -> bool:
            assert catalog.claim_upload(session["id"], "c" * 32, at=now, stale=now)
            return bool(self.driver.put_if_absent(name, chunks))

    monkeypatch.setattr(parts_ops, "staging", lambda ctx: Racing(real(ctx)))
    data, digest = sealed_parts(session, 0, api.model / files[0]["path"])[0]
    part = f"/v1/uploads/{session['id']}/files/0/parts/0"
    answer = api.client.put(part, content=data, headers={**pusher, "X-Part-Digest": digest})
    assert answer.status_code == 404 and "being committed" in answer.text
    monkeypatch.setattr(parts_ops, "staging", real)
    catalog.release_upload(session["id"], "c" * 32, at=now)
    # The part did land (a commit holding the session then may or may not have listed it: it
    # checks whatever it read); sent again, it is the same part, and the session has it once.
    again = api.client.put(part, content=data, headers={**pusher, "X-Part-Digest": digest})
    assert again.status_code == 204
    state = api.client.get(f"/v1/uploads/{session['id']}", headers=pusher)
    assert state.json()["files"][0]["received"] == [0]


# -- reads through the server -------------------------------------------------------------------


def test_the_server_refuses_a_stored_copy_with_bytes_appended(api: Api, home: Path) -> None:
    version = api.registry.show("org/llama@1").version
    entry = max(version.files, key=lambda f: f.size)
    digest = entry.digest
    found = [
        p
        for p in (home / "store").rglob("*")
        if p.is_file() and "blob" in p.as_posix() and not p.name.endswith((".key", ".slot"))
    ]
    target = api.registry.sealed_object("org/llama@1", entry.path)
    stored = [p for p in found if p.stat().st_size == target.size]
    assert stored, f"no stored object of {target.size} bytes for {digest}"
    for path in stored:
        os.chmod(path, 0o644)
        with open(path, "ab") as handle:
            handle.write(b"appended")
    tail = f"bytes={target.size - 100}-{target.size - 1}"
    answer = api.client.get(
        "/v1/blob",
        params={"ref": "org/llama@1", "path": entry.path},
        headers={**api.auth(READER), "Range": tail},
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "integrity_error"
    beyond = f"bytes={target.size - 1}-{target.size + 7}"
    answer = api.client.get(
        "/v1/blob",
        params={"ref": "org/llama@1", "path": entry.path},
        headers={**api.auth(READER), "Range": beyond},
    )
    assert answer.status_code == 502 and b"appended" not in answer.content
    with pytest.raises(IntegrityError):
        api.registry.read_sealed(target, target.size - 10, 10)


def test_pull_and_prepare_through_a_broker_that_omits_a_key(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.client import RemoteRegistry
    from tests.test_api_cli import LiveServer

    Registry.init(home)
    model = make_model(tmp_path / "model", shards=2, shard_size=20_000, seed=3)
    with Registry.open(home) as registry:
        pushed = registry.push("org/m", model)
        _record, secret = registry.create_token("r", role=READER, models=["*"])
        dropped = next(f for f in pushed.version.files if f.path.endswith(".safetensors"))
        real = Registry.broker_keys

        def short(self: Registry, ref: str, **kwargs: Any) -> Any:
            brokered = real(self, ref, **kwargs)
            keys = {k: v for k, v in brokered.keys.items() if k != ("blob", dropped.digest)}
            return dataclasses.replace(brokered, keys=keys)

        monkeypatch.setattr(Registry, "broker_keys", short)
        with LiveServer(registry, tmp_path / "staging") as server:
            remote = RemoteRegistry(server.url, secret)
            with pytest.raises(IntegrityError, match="sent no key"):
                remote.pull("org/m@1", tmp_path / "pulled")
            assert not (tmp_path / "pulled").exists()
            with pytest.raises(IntegrityError, match="sent no key"):
                remote.prepare("org/m@1", tmp_path / "prepared", include=["*.safetensors"])


# -- file modes ---------------------------------------------------------------------------------


def test_catalog_home_and_staging_are_private_whatever_the_umask(
    home: Path, tmp_path: Path
) -> None:
    previous = os.umask(0)
    try:
        Registry.init(home)
        model = make_model(tmp_path / "model", shards=1, shard_size=1000, seed=4)
        with Registry.open(home) as registry:
            registry.push("org/m", model)
            _record, secret = registry.create_token("p", role=PUSHER, models=["*"])
            api_settings(registry, staging_dir=tmp_path / "deep" / "staging")
            with TestClient(create_app(registry)) as client:
                files = _files(model)
                session = client.post(
                    "/v1/uploads",
                    json={"model": "org/m", "files": files},
                    headers={"Authorization": f"Bearer {secret}"},
                ).json()
                data, digest = sealed_parts(session, 0, model / files[0]["path"])[0]
                put = client.put(
                    f"/v1/uploads/{session['id']}/files/0/parts/0",
                    content=data,
                    headers={"Authorization": f"Bearer {secret}", "X-Part-Digest": digest},
                )
                assert put.status_code == 204
                # The parts are ciphertext; the folders that hold them are still private.
                folders = [tmp_path / "deep", *(tmp_path / "deep").rglob("*")]
                assert any(p.name.startswith("0-") and p.is_file() for p in folders)  # the part
                loose = [
                    f"{p} {stat.filemode(p.stat().st_mode)}"
                    for p in folders
                    if p.is_dir() and p.stat().st_mode & 0o077
                ]
                assert not loose, loose
        catalog = [home / "catalog.db", home / "catalog.db-wal", home / "catalog.db-shm"]
        paths = [home, *[p for p in catalog if p.exists()]]
        paths += [p for p in home.rglob("*") if p.is_dir()]
        assert home / "catalog.db" in paths
        loose = [
            f"{p} {stat.filemode(p.stat().st_mode)}" for p in paths if p.stat().st_mode & 0o077
        ]
        assert not loose, loose
    finally:
        os.umask(previous)


# -- forwarded addresses ------------------------------------------------------------------------


def _client_seen(app: Any, peer: str, forwarded: list[str]) -> str:
    request = RequestFactory(app=app).get("/", headers={})
    request.scope["client"] = (peer, 4000)
    request.scope["headers"] = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return client_of(request)


def test_forwarded_addresses_are_believed_only_from_configured_proxies(
    home: Path, tmp_path: Path
) -> None:
    Registry.init(home)
    with Registry.open(home) as registry:
        plain = create_app(registry)
        assert _client_seen(plain, "127.0.0.1", ["6.6.6.6"]) == "127.0.0.1"
        assert _client_seen(plain, "10.0.0.2", ["6.6.6.6"]) == "10.0.0.2"
        registry.settings.__dict__["api"] = dataclasses.replace(
            registry.settings.api, trusted_proxies=("10.0.0.0/8", "::1")
        )
        behind = create_app(registry)
        assert _client_seen(behind, "10.0.0.2", ["6.6.6.6"]) == "6.6.6.6"
        # What the client wrote itself lies beyond the proxies: the nearest untrusted hop.
        assert _client_seen(behind, "10.0.0.2", ["1.1.1.1, 6.6.6.6, 10.0.0.9"]) == "6.6.6.6"
        assert _client_seen(behind, "::1", ["6.6.6.6", "7.7.7.7"]) == "7.7.7.7"
        assert _client_seen(behind, "10.0.0.2", ["not-an-address"]) == "10.0.0.2"
        assert _client_seen(behind, "192.0.2.1", ["6.6.6.6"]) == "192.0.2.1"  # not a proxy


def test_trusted_proxies_must_be_addresses_or_networks(home: Path) -> None:
    with pytest.raises(InvalidInputError, match="trusted_proxies"):
        ApiSettings(trusted_proxies=("10.0.0.0/33",))
    with pytest.raises(InvalidInputError, match="trusted_proxies"):
        ApiSettings.from_config(home, {"trusted_proxies": "10.0.0.1"})
    settings = ApiSettings.from_config(home, {"trusted_proxies": ["10.0.0.0/8", "::1"]})
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    assert 'trusted_proxies = ["10.0.0.0/8", "::1"]' in settings.config_lines()


def test_serve_does_not_let_uvicorn_believe_forwarded_headers(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from click.testing import CliRunner

    from cli.main import main

    Registry.init(home)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.update(k))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    assert seen["proxy_headers"] is False


# -- the audit chain, anchored in the stores' journal --------------------------------------------


def _rewrite(registry: Registry, entry: int, **changes: str) -> None:
    """Rewrite one audit entry in the catalog and recompute every later hash, as an attacker
    with the database (and the code) would: the chain alone still verifies."""
    with registry.catalog.engine.begin() as connection:
        rows = list(connection.execute(select(AuditEvent.__table__).order_by(AuditEvent.id)))
        prev = GENESIS
        for row in rows:
            values = dict(row._mapping)
            if values["id"] == entry:
                values.update(changes)
            digest = audit_hash(
                prev,
                id=values["id"],
                at=values["at"],
                actor=values["actor"],
                action=values["action"],
                subject=values["subject"],
                details=values["details"],
            )
            connection.execute(
                text(
                    "UPDATE audit_events SET actor = :actor, details = :details, "
                    "prev_hash = :prev, hash = :hash WHERE id = :id"
                ),
                {
                    "actor": values["actor"],
                    "details": values["details"],
                    "prev": prev,
                    "hash": digest,
                    "id": values["id"],
                },
            )
            prev = digest


def test_a_rewritten_audit_chain_fails_against_the_stores_journal(
    home: Path, tmp_path: Path
) -> None:
    Registry.init(home)
    model = make_model(tmp_path / "model", shards=1, shard_size=1000, seed=5)
    with Registry.open(home) as registry:
        registry.push("org/m", model)
        registry.promote("org/m@1", "prod")
        registry.drain_journal()
        before = registry.verify_audit()
        assert before.ok and before.regions_compared and not before.differences, before
        first = registry.audit_events(limit=100_000)[-1].id
        _rewrite(registry, first, actor="someone-else@example")
        chain = registry.catalog.verify_audit()
        assert chain.ok  # the chain alone cannot tell
        after = registry.verify_audit()
        assert not after.ok
        assert any(f"audit entry {first} " in d and "rewritten" in d for d in after.differences)
        assert "differs from the stores' journal" in after.problem
    from click.testing import CliRunner

    from cli.main import main

    result = CliRunner().invoke(main, ["audit", "verify"])
    assert result.exit_code == IntegrityError.exit_code, result.output
    assert "rewritten" in result.output
    result = CliRunner().invoke(main, ["audit", "verify", "--json"])
    assert json.loads(result.stdout)["differences"]


def test_audit_entries_deleted_from_the_catalog_are_missing_from_it(
    home: Path, tmp_path: Path
) -> None:
    Registry.init(home)
    model = make_model(tmp_path / "model", shards=1, shard_size=1000, seed=6)
    with Registry.open(home) as registry:
        _record, secret = registry.create_token("a", role=ADMIN, models=["*"])
        registry.push("org/m", model)
        registry.promote("org/m@1", "prod")
        registry.drain_journal()
        newest = registry.audit_events(limit=1)[0].id
        with registry.catalog.engine.begin() as connection:
            # The newest entry: no chain shows its removal by itself.
            connection.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": newest})
        assert registry.catalog.verify_audit().ok
        result = registry.verify_audit()
        assert not result.ok
        assert any(f"audit entry {newest} " in d and "deleted" in d for d in result.differences)
        # Through the API, the same answer.
        with TestClient(create_app(registry)) as client:
            answer = client.get("/v1/audit/verify", headers={"Authorization": f"Bearer {secret}"})
            assert answer.status_code == 200
            assert answer.json()["ok"] is False and answer.json()["differences"]
