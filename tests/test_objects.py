"""Object URLs (`/v1/objects/{id}`, registry/api/routes/objects.py): a version's ciphertext at
stable, immutable, cacheable URLs named by the key broker's answer; ranges, validators, HEAD,
the token's model scope (the same 404 for another model's object as for a missing one), and
the client reading through a cache by them (tests/test_fanout.py runs a real cache)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from registry.api.app import create_app
from registry.crypto import sealed
from registry.service import READER, Registry
from registry.testing.models import make_model

CACHE_CONTROL = "public, max-age=31536000, immutable"


class Api:
    def __init__(self, client: TestClient[Any], registry: Registry, tokens: dict[str, str]):
        self.client, self.registry, self.tokens = client, registry, tokens

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def keys(self, ref: str, who: str = "all") -> dict[tuple[str, str], dict[str, Any]]:
        answer = self.client.post("/v1/keys", json={"ref": ref}, headers=self.auth(who))
        assert answer.status_code == 200, answer.text
        return {(k["purpose"], k["digest"]): k for k in answer.json()["keys"]}

    def bytes_out(self) -> float:
        return float(self.client.app.state["registry_state"].metrics.bytes_out._value.get())


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model", shards=2, shard_size=200_000, seed=5)


@pytest.fixture
def api(home: Path, tmp_path: Path, model: Path) -> Iterator[Api]:
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/llama", model)
        registry.push("other/secret", make_model(tmp_path / "s", shards=1, shard_size=999, seed=6))
        tokens = {
            "org": registry.create_token("org", role=READER, models=["org/*"])[1],
            "all": registry.create_token("all", role=READER, models=["*"])[1],
        }
        with TestClient(create_app(registry)) as client:
            yield Api(client, registry, tokens)


def _shard(api: Api) -> tuple[Any, dict[str, Any]]:
    version = api.registry.show("org/llama@1").version
    entry = max(version.files, key=lambda f: f.size)
    return entry, api.keys("org/llama@1")[("blob", entry.digest)]


def test_the_key_broker_names_every_object_and_its_url_serves_the_sealed_bytes(
    api: Api, model: Path
) -> None:
    version = api.registry.show("org/llama@1").version
    keys = api.keys("org/llama@1", "org")
    assert set(keys) == {("manifest", version.digest)} | {("blob", f.digest) for f in version.files}
    for entry in version.files:
        named = keys[("blob", entry.digest)]
        assert len(named["object"]) == 64 and entry.digest.split(":")[-1] not in named["object"]
        answer = api.client.get(f"/v1/objects/{named['object']}", headers=api.auth("org"))
        assert answer.status_code == 200, answer.text
        assert answer.headers["etag"] == f'"{named["object"]}"'
        assert answer.headers["cache-control"] == CACHE_CONTROL
        assert answer.headers["accept-ranges"] == "bytes"
        assert int(answer.headers["content-length"]) == named["object_size"] == len(answer.content)
        # What /v1/blob serves by reference, byte for byte.
        by_ref = api.client.get(
            "/v1/blob",
            params={"ref": "org/llama@1", "path": entry.path},
            headers={**api.auth("org"), "Range": f"bytes=0-{named['object_size'] - 1}"},
        )
        assert by_ref.content == answer.content
        plain = b"".join(
            bytes(chunk)
            for chunk in sealed.unseal(
                lambda offset, length, data=answer.content: data[offset : offset + length],
                base64.b64decode(named["key"]),
                entry.digest,
                expected_size=entry.size,
                what=entry.path,
            )
        )
        assert plain == (model / entry.path).read_bytes()
    # The manifest's object too, sized as its sealed header says.
    manifest = keys[("manifest", version.digest)]
    answer = api.client.get(f"/v1/objects/{manifest['object']}", headers=api.auth("org"))
    assert answer.status_code == 200
    assert sealed.SealedHeader.unpack(answer.content[: sealed.HEADER_SIZE], what="m").sealed_size
    assert len(answer.content) == manifest["object_size"]


def test_ranges_are_answered_206_and_a_range_outside_the_object_416(api: Api) -> None:
    _entry, named = _shard(api)
    url, size = f"/v1/objects/{named['object']}", named["object_size"]
    whole = api.client.get(url, headers=api.auth("org")).content
    before = api.bytes_out()
    for header, start, end in (
        ("bytes=10-99", 10, 99),
        ("bytes=100-", 100, size - 1),
        ("bytes=-50", size - 50, size - 1),
        (f"bytes=5-{size + 1000}", 5, size - 1),
    ):
        answer = api.client.get(url, headers={**api.auth("org"), "Range": header})
        assert answer.status_code == 206, (header, answer.text)
        assert answer.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert answer.content == whole[start : end + 1]
        assert answer.headers["etag"] == f'"{named["object"]}"'
    served = (90) + (size - 100) + 50 + (size - 5)
    assert api.bytes_out() - before == served  # counted as /v1/blob counts
    answer = api.client.get(url, headers={**api.auth("org"), "Range": f"bytes={size}-"})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{size}"
    assert answer.json()["error"]["code"] == "range_not_satisfiable"
    for bad in ("bytes=0-1,5-9", "bytes=9-2", "items=0-1", "bytes=-"):
        answer = api.client.get(url, headers={**api.auth("org"), "Range": bad})
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["code"] == "invalid_input"
    # If-Range naming another representation: the whole object, not the range.
    answer = api.client.get(
        url, headers={**api.auth("org"), "Range": "bytes=0-9", "If-Range": '"other"'}
    )
    assert answer.status_code == 200 and answer.content == whole


def test_validators_head_and_not_modified(api: Api) -> None:
    _entry, named = _shard(api)
    url = f"/v1/objects/{named['object']}"
    for tag in (f'"{named["object"]}"', f'W/"{named["object"]}"', f'"x", "{named["object"]}"', "*"):
        answer = api.client.get(url, headers={**api.auth("org"), "If-None-Match": tag})
        assert answer.status_code == 304, tag
        assert answer.content == b""
        assert answer.headers["etag"] == f'"{named["object"]}"'
    changed = api.client.get(url, headers={**api.auth("org"), "If-None-Match": '"x"'})
    assert changed.status_code == 200
    before = api.bytes_out()
    answer = api.client.head(url, headers=api.auth("org"))
    assert answer.status_code == 200 and answer.content == b""
    assert int(answer.headers["content-length"]) == named["object_size"]
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["cache-control"] == CACHE_CONTROL
    assert api.bytes_out() == before
    assert api.client.head(url).status_code == 401


def test_another_models_object_is_the_404_of_a_missing_one(api: Api) -> None:
    secret = api.registry.show("other/secret@1").version
    hidden = api.keys("other/secret@1")[("blob", secret.files[0].digest)]["object"]
    missing = "0" * 64
    answers = {
        oid: api.client.get(f"/v1/objects/{oid}", headers=api.auth("org"))
        for oid in (hidden, missing)
    }
    for oid, answer in answers.items():
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == f"no object {oid}"
    hints = {answer.json()["error"]["hint"] for answer in answers.values()}
    assert len(hints) == 1
    assert api.client.head(f"/v1/objects/{hidden}", headers=api.auth("org")).status_code == 404
    # A token for that model reads it; no token at all is a 401 before anything is looked up.
    assert api.client.get(f"/v1/objects/{hidden}", headers=api.auth("all")).status_code == 200
    assert api.client.get(f"/v1/objects/{hidden}").status_code == 401
    for bad in ("A" * 64, "0" * 63, "../etc"):
        answer = api.client.get(f"/v1/objects/{bad}", headers=api.auth("org"))
        assert answer.status_code in (400, 404), bad
        assert answer.status_code == 400 or bad == "../etc"


def test_an_expired_versions_objects_are_no_longer_served(api: Api) -> None:
    _entry, named = _shard(api)
    url = f"/v1/objects/{named['object']}"
    assert api.client.head(url, headers=api.auth("org")).status_code == 200
    api.registry.delete("org/llama@1", reason="test")
    assert api.client.head(url, headers=api.auth("org")).status_code == 404
