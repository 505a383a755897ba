"""The REST API: every route x every role (allowed, 401 or 403), a resumable upload that ends
byte-identical to a local push, the key broker's scope and audit, ranged ciphertext a client
decrypts itself, malformed input that never yields a 5xx, rate limits, metrics and the
checked-in OpenAPI schema."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import blake3
import pytest
from litestar.testing import TestClient

from registry.api.app import create_app, openapi_document
from registry.crypto import sealed
from registry.digest import hash_file
from registry.service import ADMIN, PROMOTER, PUSHER, READER, ROLES, Registry
from registry.testing.models import make_model
from tests.apikit import api_settings, sealed_parts

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


@dataclass
class Api:
    client: TestClient[Any]
    registry: Registry
    tokens: dict[str, str]
    model: Path

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def api(home: Path, tmp_path: Path) -> Iterator[Api]:
    Registry.init(home)
    model = make_model(tmp_path / "model", shards=2, shard_size=50_000, seed=1)
    with Registry.open(home) as registry:
        registry.push("org/llama", model)
        registry.push("other/secret", make_model(tmp_path / "s", shards=1, shard_size=999, seed=2))
        tokens = {
            role: registry.create_token(role, role=role, models=["org/*"])[1] for role in ROLES
        }
        for role in ROLES:  # tokens for every model, which registry-wide routes need
            tokens[f"all-{role}"] = registry.create_token(f"all-{role}", role=role, models=["*"])[1]
        _record, tokens["expired"] = registry.create_token(
            "old", role=ADMIN, models=["*"], expires="1h"
        )
        registry.catalog.engine.dispose()
        with registry.catalog.engine.begin() as connection:
            from sqlalchemy import text

            connection.execute(
                text("UPDATE api_tokens SET expires_at = :t WHERE name = 'old'"),
                {"t": datetime.now(UTC) - timedelta(minutes=1)},
            )
        revoked, tokens["revoked"] = registry.create_token("gone", role=ADMIN, models=["*"])
        registry.revoke_token(revoked.id)
        with TestClient(create_app(registry)) as client:
            yield Api(client, registry, tokens, model)


def _files(model: Path) -> list[dict[str, Any]]:
    return [
        {"path": p.relative_to(model).as_posix(), "size": p.stat().st_size, "digest": hash_file(p)}
        for p in sorted(model.rglob("*"))
        if p.is_file()
    ]


def _part_digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


# (method, path, json body or None, least role that may, params)
ROUTE_TABLE: list[tuple[str, str, Any, str, dict[str, str]]] = [
    ("GET", "/v1/models", None, READER, {}),
    ("GET", "/v1/versions", None, READER, {"model": "org/llama"}),
    ("GET", "/v1/version", None, READER, {"ref": "org/llama@1"}),
    ("GET", "/v1/blob", None, READER, {"ref": "org/llama@1"}),
    ("GET", "/v1/objects/" + "0" * 64, None, READER, {}),
    ("HEAD", "/v1/objects/" + "0" * 64, None, READER, {}),
    ("POST", "/v1/keys", {"ref": "org/llama@1"}, READER, {}),
    ("POST", "/v1/verify", {"ref": "org/llama@1"}, READER, {}),
    ("GET", "/v1/aliases", None, READER, {"model": "org/llama"}),
    ("GET", "/v1/history", None, READER, {"model": "org/llama"}),
    ("GET", "/v1/retention", None, READER, {"model": "org/llama"}),
    ("GET", "/v1/retention/plan", None, READER, {"model": "org/llama"}),
    ("GET", "/v1/holds", None, READER, {}),
    ("POST", "/v1/uploads", {"model": "org/llama", "files": []}, PUSHER, {}),
    ("GET", "/v1/uploads/" + "0" * 32, None, PUSHER, {}),
    ("DELETE", "/v1/uploads/" + "0" * 32, None, PUSHER, {}),
    ("POST", "/v1/uploads/" + "0" * 32 + "/commit", None, PUSHER, {}),
    ("PUT", "/v1/uploads/" + "0" * 32 + "/files/0/parts/0", None, PUSHER, {}),
    ("POST", "/v1/aliases/promote", {"ref": "org/llama@1", "alias": "prod"}, PUSHER, {}),
    ("POST", "/v1/aliases/rollback", {"model": "org/llama", "alias": "prod"}, PUSHER, {}),
    ("POST", "/v1/aliases/protect", {"model": "org/llama", "alias": "prod"}, PROMOTER, {}),
    ("POST", "/v1/tags", {"ref": "org/llama@1", "tag": "nightly"}, PROMOTER, {}),
    ("POST", "/v1/tags/remove", {"ref": "org/llama@1", "tag": "nightly"}, PROMOTER, {}),
    ("GET", "/v1/tags", None, READER, {"ref": "org/llama@1"}),
    ("GET", "/v1/tagged", None, READER, {"tag": "nightly"}),
    ("GET", "/v1/search", None, READER, {"q": "llama"}),
    ("GET", "/v1/diff", None, READER, {"a": "org/llama@1", "b": "org/llama@1"}),
    ("GET", "/v1/openssf/public-key", None, READER, {}),
    ("GET", "/v1/openssf/signature", None, READER, {"ref": "org/llama@1"}),
    ("PUT", "/v1/retention", {"model": "org/llama", "keep_last": 5}, ADMIN, {}),
    ("POST", "/v1/holds", {"ref": "org/llama@1", "reason": "r"}, ADMIN, {}),
    ("POST", "/v1/holds/release", {"ref": "org/llama@1", "reason": "r"}, ADMIN, {}),
    ("POST", "/v1/delete", {"ref": "org/llama@1", "reason": "r"}, ADMIN, {}),
    ("GET", "/v1/audit", None, ADMIN, {"model": "org/llama"}),
]
# Routes that act on every model: the same, with tokens for every model ("*").
REGISTRY_WIDE: list[tuple[str, str, Any, str, dict[str, str]]] = [
    ("POST", "/v1/gc", {"dry_run": True}, ADMIN, {}),
    ("PUT", "/v1/retention", {"model": None, "keep_last": 5}, ADMIN, {}),
    ("GET", "/v1/audit", None, ADMIN, {}),
    ("GET", "/v1/audit/verify", None, ADMIN, {}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "least", "params", "prefix"),
    [(*row, "") for row in ROUTE_TABLE] + [(*row, "all-") for row in REGISTRY_WIDE],
)
def test_every_route_for_every_role(
    api: Api, method: str, path: str, body: Any, least: str, params: dict[str, str], prefix: str
) -> None:
    def call(headers: dict[str, str]) -> Any:
        return api.client.request(method, path, json=body, params=params, headers=headers)

    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        api.auth("expired"),
        api.auth("revoked"),
    ):
        answer = call(headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert method == "HEAD" or answer.json()["error"]["code"] == "unauthenticated"
    for role in ROLES:
        answer = call(api.auth(prefix + role))
        if ROLES.index(role) < ROLES.index(least):
            assert answer.status_code == 403, (role, answer.text)
            assert method == "HEAD" or answer.json()["error"]["code"] == "permission_denied"
        else:
            assert answer.status_code not in (401, 403), (role, answer.text)
            assert answer.status_code < 500, (role, answer.text)
    if prefix:  # a token limited to some models may not act on all of them
        scoped = call(api.auth(least))
        assert scoped.status_code == 403 and "every model" in scoped.json()["error"]["message"]


def test_a_token_for_other_models_learns_nothing(api: Api) -> None:
    admin = api.auth(ADMIN)  # org/* only
    for params in ({"model": "other/secret"}, {"model": "other/does-not-exist"}):
        answer = api.client.get("/v1/versions", params=params, headers=admin)
        assert answer.status_code == 403
        assert answer.json()["error"]["message"] == "this token may not act on that model"
    names = [m["name"] for m in api.client.get("/v1/models", headers=admin).json()["models"]]
    assert names == ["org/llama"]
    # Inside its patterns, a missing model is a plain 404.
    assert (
        api.client.get("/v1/versions", params={"model": "org/none"}, headers=admin).status_code
        == 404
    )


def test_scoped_tokens_stay_in_scope_on_every_route(api: Api) -> None:
    """An org/* admin cannot reach other models through registry-wide routes, and a rollback's
    `to` is checked like its model: the same 403 whether the version exists or not."""
    admin, pusher = api.auth(ADMIN), api.auth(PUSHER)
    assert api.client.get("/v1/audit", params={"model": "org/llama"}, headers=admin).is_success
    assert (
        api.client.get("/v1/audit", params={"model": "other/secret"}, headers=admin).status_code
        == 403
    )
    before = len(api.registry.versions("other/secret"))
    assert api.client.post("/v1/gc", json={"dry_run": False}, headers=admin).status_code == 403
    default = {"model": None, "keep_last": 1}
    assert api.client.put("/v1/retention", json=default, headers=admin).status_code == 403
    assert api.registry.retention("other/secret")[1] == "none"  # nothing changed
    assert len(api.registry.versions("other/secret")) == before
    api.client.post(
        "/v1/aliases/promote", json={"ref": "org/llama@1", "alias": "prod"}, headers=pusher
    )
    answers = [
        api.client.post(
            "/v1/aliases/rollback",
            json={"model": "org/llama", "alias": "prod", "to": to},
            headers=pusher,
        )
        for to in ("other/secret@1", "other/secret@9", "other/none@1")
    ]
    assert [a.status_code for a in answers] == [403, 403, 403]
    assert len({a.json()["error"]["message"] for a in answers}) == 1


def test_a_bad_reference_without_a_token_is_401(api: Api) -> None:
    for path, kwargs in (
        ("/v1/version", {"params": {"ref": "org/llama@@1"}}),
        ("/v1/blob", {"params": {"ref": "../x"}}),
    ):
        assert api.client.get(path, **kwargs).status_code == 401


def test_key_broker_refuses_other_models_and_is_audited(api: Api) -> None:
    refused = api.client.post("/v1/keys", json={"ref": "other/secret@1"}, headers=api.auth(READER))
    assert refused.status_code == 403
    allowed = api.client.post("/v1/keys", json={"ref": "org/llama@1"}, headers=api.auth(READER))
    assert allowed.status_code == 200
    event = api.registry.audit_events(subject="org/llama", limit=1)[0]
    assert event.action == "key-broker" and event.actor.startswith("token:reader:")
    assert event.details["keys"] == len(allowed.json()["keys"])


def test_ciphertext_ranges_decrypt_with_the_brokers_keys(api: Api) -> None:
    reader = api.auth(READER)
    version = api.client.get("/v1/version", params={"ref": "org/llama@1"}, headers=reader).json()
    keys = {
        (k["purpose"], k["digest"]): base64.b64decode(k["key"])
        for k in api.client.post("/v1/keys", json={"ref": "org/llama@1"}, headers=reader).json()[
            "keys"
        ]
    }
    for entry in version["files"]:

        def read_range(offset: int, length: int, path: str = entry["path"]) -> bytes:
            answer = api.client.get(
                "/v1/blob",
                params={"ref": "org/llama@1", "path": path},
                headers={**reader, "Range": f"bytes={offset}-{offset + length - 1}"},
            )
            assert answer.status_code == 206, answer.text
            return answer.content

        plain = b"".join(
            bytes(chunk)
            for chunk in sealed.unseal(
                read_range,
                keys[("blob", entry["digest"])],
                entry["digest"],
                expected_size=entry["size"],
                what=entry["path"],
            )
        )
        assert plain == (api.model / entry["path"]).read_bytes()


def test_an_interrupted_upload_resumes_and_matches_a_local_push(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_settings(api.registry, part_size=MiB, chunk_size=256 * 1024)
    model = make_model(tmp_path / "big", shards=2, shard_size=2_500_000, seed=9)
    pusher = api.auth(PUSHER)
    files = _files(model)
    session = api.client.post(
        "/v1/uploads", json={"model": "org/llama", "files": files, "message": "ci"}, headers=pusher
    ).json()
    assert session["chunk_size"] == 256 * 1024 and session["chunks_per_part"] == 4
    sealed = {
        entry["index"]: sealed_parts(session, entry["index"], model / entry["path"])
        for entry in session["files"]
    }
    sent: list[tuple[int, int]] = []

    def send(index: int, part: int) -> None:
        data, digest = sealed[index][part]
        answer = api.client.put(
            f"/v1/uploads/{session['id']}/files/{index}/parts/{part}",
            content=data,
            headers={**pusher, "X-Part-Digest": digest},
        )
        assert answer.status_code == 204, answer.text
        sent.append((index, part))

    # First attempt: "killed" after half the parts of every file.
    for entry in session["files"]:
        for part in range(entry["parts"] // 2):
            send(entry["index"], part)
    first = len(sent)
    early = api.client.post(f"/v1/uploads/{session['id']}/commit", headers=pusher)
    assert early.status_code == 400 and "not received" in early.json()["error"]["message"]
    # Resume: ask what arrived (and the keys, issued again: the same), send only the rest.
    status = api.client.get(f"/v1/uploads/{session['id']}", headers=pusher).json()
    assert [f["key"] for f in status["files"]] == [f["key"] for f in session["files"]]
    for entry in status["files"]:
        for part in sorted(set(range(entry["parts"])) - set(entry["received"])):
            send(entry["index"], part)
    assert len(sent) == sum(f["parts"] for f in status["files"])  # nothing sent twice
    assert first > 0
    done = api.client.post(f"/v1/uploads/{session['id']}/commit", headers=pusher)
    assert done.status_code == 201, done.text
    pushed = done.json()
    local = api.registry.push("org/llama", model)  # the same bytes pushed directly
    assert not local.created and local.version.digest == pushed["digest"]
    assert api.client.get(f"/v1/uploads/{session['id']}", headers=pusher).status_code == 404
    staged = api.registry.settings.home / "uploads" / "objects" / "sessions"
    assert not staged.exists() or not list(staged.iterdir())  # the parts went with the session


def test_malformed_input_is_a_4xx(api: Api) -> None:
    admin, pusher = api.auth(ADMIN), api.auth(PUSHER)
    cases = [
        ("POST", "/v1/uploads", {"content": b"{" * 2_000_000}, pusher),  # oversized JSON
        ("POST", "/v1/uploads", {"content": b"[" * 10_000 + b"]" * 10_000}, pusher),  # nesting
        ("POST", "/v1/uploads", {"content": b"\xff\xfe\x00"}, pusher),  # not UTF-8
        ("POST", "/v1/uploads", {"json": {"model": "../../etc", "files": []}}, pusher),
        (
            "POST",
            "/v1/uploads",
            {
                "json": {
                    "model": "org/x",
                    "files": [{"path": "../escape", "size": 1, "digest": "blake3:" + "0" * 64}],
                }
            },
            pusher,
        ),
        ("GET", "/v1/versions", {"params": {"model": "org/../../x"}}, admin),
        ("GET", "/v1/version", {"params": {"ref": "org/llama@@1"}}, admin),
        ("POST", "/v1/aliases/promote", {"json": {"ref": 5, "alias": []}}, admin),
        ("GET", "/v1/blob", {"params": {"ref": "org/llama@1"}}, admin),  # no Range
        ("GET", "/v1/audit", {"params": {"limit": "-1"}}, admin),
        ("GET", "/v1/history", {"params": {"model": "org/llama", "at": "yesterday"}}, admin),
    ]
    for method, path, kwargs, headers in cases:
        answer = api.client.request(
            method, path, headers={**headers, "content-type": "application/json"}, **kwargs
        )
        assert 400 <= answer.status_code < 500, (path, kwargs, answer.status_code, answer.text)
        assert set(answer.json()["error"]) == {"code", "message", "hint"}
    files = _files(api.model)
    session = api.client.post(
        "/v1/uploads", json={"model": "org/llama", "files": files}, headers=pusher
    ).json()
    part = f"/v1/uploads/{session['id']}/files/0/parts/0"
    data, _digest = sealed_parts(session, 0, api.model / files[0]["path"])[0]
    wrong = api.client.put(
        part, content=data, headers={**pusher, "X-Part-Digest": "blake3:" + "0" * 64}
    )
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]["message"]
    scraped = api.client.get("/metrics").text  # counted, and a security event
    assert "model_registry_integrity_failures_total 1.0" in scraped
    assert 'model_registry_security_events_total{kind="integrity-failure"} 1.0' in scraped
    huge = api.client.put(part, content=data + b"x" * 4096, headers=pusher)
    assert huge.status_code == 413
    beyond = api.client.put(
        f"/v1/uploads/{session['id']}/files/0/parts/99",
        content=b"",
        headers={**pusher, "X-Part-Digest": _part_digest(b"")},
    )
    assert beyond.status_code == 400
    other = api.client.get(f"/v1/uploads/{session['id']}", headers=api.auth(ADMIN))
    assert other.status_code == 404  # another token's session does not exist for it


def test_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    state = api.client.app.state["registry_state"]
    state.limiter.burst, state.limiter.rate = 3, 0.5
    state.limiter._buckets.clear()
    answers = [api.client.get("/v1/models", headers=api.auth(READER)) for _ in range(5)]
    assert [a.status_code for a in answers][:3] == [200, 200, 200]
    assert answers[-1].status_code == 429
    assert int(answers[-1].headers["retry-after"]) >= 1


def test_health_readiness_metrics_and_schema(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json()["status"] == "ready"
    api.client.get("/v1/models", headers=api.auth(READER))
    api.client.get("/v1/models")
    text = api.client.get("/metrics").text
    assert (
        'model_registry_http_requests_total{method="GET",route="/v1/models",status="200"}' in text
    )
    assert 'status="401"' in text
    served = api.client.get("/schema/openapi.json").json()
    assert served == json.loads(openapi_document())
    page = api.client.get("/schema/swagger")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text


def test_the_checked_in_openapi_schema_matches_the_code() -> None:
    checked_in = (ROOT / "docs" / "api" / "openapi.json").read_text()
    assert checked_in == openapi_document(), (
        "docs/api/openapi.json is stale: run .venv/bin/python scripts/export_openapi.py"
    )


def test_every_success_response_has_a_typed_schema() -> None:
    """Clients can be generated: every 2xx answer with a body names its schema, JSON ones a
    model with properties (or a list of them), never a free-form object; a 204 has no body."""
    document = json.loads(openapi_document())
    components = document["components"]["schemas"]

    def typed(schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            model = components[schema["$ref"].rsplit("/", 1)[1]]
            return model.get("type") == "object" and bool(model.get("properties"))
        if schema.get("type") == "array":
            return typed(schema["items"])
        return False

    answers = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if not status.startswith("2"):
                    continue
                answers += 1
                where = f"{method.upper()} {path} {status}"
                if status == "204":
                    assert "content" not in response, where
                    continue
                assert response.get("content"), f"{where} has no schema"
                for media, content in response["content"].items():
                    assert "schema" in content, f"{where} ({media}) has no schema"
                    if media == "application/json":
                        assert typed(content["schema"]), f"{where}: {content['schema']}"
                    else:
                        assert content["schema"].get("type") == "string", where
    assert answers >= 29


def test_every_route_runs_a_declared_operation_with_the_role_it_needs() -> None:
    """The routes' guard asks `access.check` about the operation each route names, the rule
    the operation itself enforces: the least role of every route is its operation's."""
    from litestar import Litestar

    from registry.api.app import ROUTES
    from registry.ops.access import PERMISSIONS

    least = {(method, path): role for method, path, _body, role, _params in ROUTE_TABLE}
    least.update({(m, p): role for m, p, _b, role, _params in REGISTRY_WIDE})
    app = Litestar(route_handlers=ROUTES)
    seen = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.http_methods == {"OPTIONS"}:
                continue  # Litestar's own answer to CORS preflights
            operation = handler.opt.get("operation")
            if not route.path.startswith("/v1"):
                assert operation is None, route.path
                continue
            assert operation in PERMISSIONS, (route.path, operation)
            for method in handler.http_methods:
                path = route.path.replace("{session_id:str}", "0" * 32)
                path = path.replace("{index:int}", "0").replace("{part:int}", "0")
                path = path.replace("{object_id:str}", "0" * 64)
                assert least[(method, path)] == PERMISSIONS[operation].role, (method, path)
                seen += 1
    assert seen == len(least)  # every route of the tables, and no other


def test_the_token_is_checked_before_the_parameters(api: Api) -> None:
    """401, then 403 for the role, come before Litestar reads a malformed parameter (400)."""
    bad = {"params": {"limit": "many"}}
    assert api.client.get("/v1/audit", **bad).status_code == 401
    assert api.client.get("/v1/audit", headers=api.auth("all-reader"), **bad).status_code == 403
    assert api.client.get("/v1/audit", headers=api.auth("all-admin"), **bad).status_code == 400
    assert api.client.get("/v1/versions").status_code == 401  # `model` missing


# -- fuzzing the served schema ------------------------------------------------------------------


def test_no_generated_input_yields_a_server_error(api: Api) -> None:
    """Schemathesis against the schema the server serves: every operation gets a bounded number
    of generated requests (CI time), sent with an admin token; none may answer 5xx. (Driven
    from here rather than through schemathesis' pytest plugin, which this pytest breaks.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", api.client.app)
    headers = api.auth("all-admin")  # every model: generated names get past the scope check
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def probe(case: Any) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
                )

        probe()
    assert operations >= 25
    assert not failures, failures[:5]


def test_upload_sessions_refuse_bad_layouts_and_survive_races(api: Api) -> None:
    pusher = api.auth(PUSHER)
    catalog = api.registry._context.catalog
    staging = api.registry.settings.home / "uploads"
    empty = "blake3:" + blake3.blake3(b"").hexdigest()

    def create(files: list[dict[str, Any]]) -> Any:
        return api.client.post(
            "/v1/uploads", json={"model": "org/llama", "files": files}, headers=pusher
        )

    wrong_empty = create([{"path": "e", "size": 0, "digest": "blake3:" + "1" * 64}])
    assert wrong_empty.status_code == 400 and "empty file" in wrong_empty.json()["error"]["message"]
    clash = create(
        [
            {"path": "a", "size": 0, "digest": empty},
            {"path": "a/b", "size": 0, "digest": empty},
        ]
    )
    assert clash.status_code == 400 and "as a file and as the folder" in clash.text
    signature = create([{"path": "model.sig", "size": 0, "digest": empty}])
    assert signature.status_code == 400 and "commit's `signature`" in signature.text
    assert catalog.idle_uploads(datetime.now(UTC) + timedelta(days=1)) == []  # no orphan row
    # Something else in the staging directory does not stop new sessions.
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "stray.txt").write_text("not a session")
    files = _files(api.model)
    session = create(files).json()
    assert session["id"]
    # While a commit holds the session, a part arriving finds none (404); a failed commit hands
    # the session back for the client to finish.
    part = f"/v1/uploads/{session['id']}/files/0/parts/0"
    data, digest = sealed_parts(session, 0, api.model / files[0]["path"])[0]
    now = datetime.now(UTC)
    assert catalog.claim_upload(session["id"], "c" * 32, at=now, stale=now - timedelta(hours=1))
    late = api.client.put(part, content=data, headers={**pusher, "X-Part-Digest": digest})
    assert late.status_code == 404
    busy = api.client.post(f"/v1/uploads/{session['id']}/commit", headers=pusher)
    assert busy.status_code == 404 and "being committed" in busy.text
    catalog.release_upload(session["id"], "c" * 32, at=now)
    assert api.client.get(f"/v1/uploads/{session['id']}", headers=pusher).is_success
    missing = api.client.post(f"/v1/uploads/{session['id']}/commit", headers=pusher)
    assert missing.status_code == 400 and "not received yet" in missing.text
    assert api.client.delete(f"/v1/uploads/{session['id']}", headers=pusher).status_code == 204
    assert api.client.delete(f"/v1/uploads/{session['id']}", headers=pusher).status_code == 404
    assert (staging / "stray.txt").exists()
