"""Fan-out through a cache (docs/operations.md, "Fan-out through caches"): `model-registry serve`
with Debian's nginx in front of it, configured as the documented cache (proxy_cache, the slice
module, proxy_cache_lock, the token checked by the origin on every request with auth_request).
Twenty loaders read one version through MODEL_REGISTRY_CACHE_URL at once: every load is
bit-exact, the origin serves each object's bytes once, and the cache holds ciphertext only. A
cache that changes a byte fails the load and the pull naming the file; a token without rights is
refused through the cache, and what a cache without the token check serves is shown as
docs/security.md states it."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from registry import loader, wire
from registry.client import RemoteRegistry
from registry.errors import ConfigurationError, IntegrityError
from registry.service import READER, Registry
from registry.testing.models import make_model

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "objects-cache.conf"
LOADERS = 20
SLICE = 1024 * 1024  # the config's `slice`


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        problem = "nginx is not installed (`make nginx` installs Debian's nginx-light)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem} (under CI=true the fan-out tests must run, not skip)")
        pytest.skip(problem)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer: {log.read_text(errors='replace')[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(20)


@dataclass
class Fleet:
    origin: str
    cache: str  # the documented cache: the origin checks the token of every request
    open_cache: str  # the same cache without that check (what `public` alone allows)
    origin_log: Path
    cache_dir: Path
    model: Path
    tokens: dict[str, str]

    def bytes_sent(self) -> float:
        with urllib.request.urlopen(f"{self.origin}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(r"^model_registry_bytes_sent_total (\S+)$", text, re.MULTILINE)
        assert found is not None, text
        return float(found[1])

    def origin_gets(self) -> Counter[str]:
        """GETs of each object the origin answered, from its access log."""
        pattern = re.compile(r'"GET /v1/objects/([0-9a-f]{64}) HTTP/1\.1" 20[06]')
        return Counter(pattern.findall(self.origin_log.read_text(errors="replace")))


def _nginx_config(*, origin_port: int, port: int, open_port: int, root: Path) -> str:
    """deploy/nginx/objects-cache.conf (the documented config) made runnable here: its
    placeholders filled, its paths under `root`, and a second server on the same cache
    without the token check."""
    conf = NGINX_CONF.read_text()
    conf = conf.replace("127.0.0.1:8080", f"127.0.0.1:{origin_port}")
    conf = conf.replace("listen 8081;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("/var/cache/nginx/model-registry", str(root / "cache"))
    unchecked = re.search(r"        location /v1/objects/ \{.*?\n        \}\n", conf, re.DOTALL)
    assert unchecked is not None
    open_location = re.sub(r"\n\s*auth_request[^\n]*", "", unchecked[0])
    open_location = re.sub(r"\n\s*error_page 500[^\n]*", "", open_location)
    open_server = (
        f"    server {{\n        listen 127.0.0.1:{open_port};\n    {open_location}    }}\n"
    )
    temp = root / "tmp"
    prelude = f"daemon off;\npid {root}/nginx.pid;\nerror_log {root}/error.log notice;\n" + (
        "user root;\n" if os.getuid() == 0 else ""
    )
    conf = conf.replace(
        "http {",
        "http {\n"
        + "".join(
            f"    {kind}_temp_path {temp}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    access_log {root}/access.log;\n",
        1,
    )
    conf = conf.rstrip().removesuffix("}") + open_server + "}\n"
    return prelude + conf


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nginx = _nginx()
    root = tmp_path_factory.mktemp("fanout")
    home = root / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
    env.update(
        MODEL_REGISTRY_HOME=str(home),
        MODEL_REGISTRY_ACTOR="tester@example",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    model = make_model(root / "model", shards=2, shard_size=2_500_000, seed=41)
    saved = {k: os.environ.get(k) for k in ("MODEL_REGISTRY_HOME", "MODEL_REGISTRY_ACTOR")}
    os.environ.update(MODEL_REGISTRY_HOME=str(home), MODEL_REGISTRY_ACTOR="tester@example")
    try:
        Registry.init(home)
        with Registry.open(home) as registry:
            registry.push("org/m", model)
            registry.push("other/x", make_model(root / "x", shards=1, shard_size=9_000, seed=42))
            tokens = {
                "org": registry.create_token("fleet", role=READER, models=["org/*"])[1],
                "other": registry.create_token("other", role=READER, models=["other/*"])[1],
            }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    origin_port, port, open_port = _free_port(), _free_port(), _free_port()
    origin_log = root / "origin.log"
    with origin_log.open("wb") as log:
        origin = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(origin_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    cache = None
    try:
        _wait_for(f"http://127.0.0.1:{origin_port}/healthz", origin, origin_log)
        for folder in ("cache", "tmp"):
            (root / folder).mkdir()
        config = root / "nginx.conf"
        config.write_text(
            _nginx_config(origin_port=origin_port, port=port, open_port=open_port, root=root)
        )
        nginx_log = root / "nginx.out"
        with nginx_log.open("wb") as log:
            cache = subprocess.Popen(
                [nginx, "-c", str(config), "-p", str(root)], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_for(f"http://127.0.0.1:{port}/healthz", cache, nginx_log)
        yield Fleet(
            f"http://127.0.0.1:{origin_port}",
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{open_port}",
            origin_log,
            root / "cache",
            model,
            tokens,
        )
    finally:
        if cache is not None:
            _stop(cache)
        _stop(origin)


def _objects(fleet: Fleet, ref: str, token: str) -> dict[str, tuple[str, int]]:
    """A version's files: path -> (object id, sealed size), from the key broker's answer."""
    with RemoteRegistry(fleet.origin, token, cache_url="") as remote:
        version = remote.show(ref).version
    request = urllib.request.Request(
        f"{fleet.origin}/v1/keys",
        data=json.dumps({"ref": ref}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        keys = wire.load(wire.DataKeys, json.loads(answer.read())).to_objects()
    return {f.path: keys[("blob", f.digest)] for f in version.files}


def test_twenty_loaders_through_the_cache_each_object_served_once(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _objects(fleet, "org/m@1", fleet.tokens["org"])
    shards = {p: o for p, o in objects.items() if p.endswith(".safetensors")}
    sent_before, gets_before = fleet.bytes_sent(), fleet.origin_gets()
    monkeypatch.setenv("MODEL_REGISTRY_CACHE_URL", fleet.cache)
    expected = {}
    for shard in sorted(fleet.model.glob("*.safetensors")):
        expected.update(load_file(str(shard)))
    results: list[Any] = [None] * LOADERS
    start = threading.Barrier(LOADERS)

    def load(index: int) -> None:
        try:
            with RemoteRegistry(fleet.origin, fleet.tokens["org"]) as remote:
                assert remote.cache_url == fleet.cache
                start.wait(60)
                state = loader.load(
                    "org/m@1", registry=remote, device="cpu", framework="numpy", cache=False
                )
            results[index] = {name: state[name].tobytes() for name in state}
        except BaseException as error:  # noqa: BLE001 - reported below, per loader
            results[index] = error

    threads = [threading.Thread(target=load, args=(i,)) for i in range(LOADERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for index, result in enumerate(results):
        assert isinstance(result, dict), (index, result)
        assert result.keys() == expected.keys()
        for name, array in expected.items():
            assert result[name] == array.tobytes(), (index, name)
    # The origin served each shard's sealed bytes exactly once, slice by slice: its byte count
    # rose by their sum, and it answered one GET per slice of each.
    assert fleet.bytes_sent() - sent_before == sum(size for _id, size in shards.values())
    gets = fleet.origin_gets() - gets_before
    assert gets == Counter({oid: -(-size // SLICE) for oid, size in shards.values()})
    # What the cache keeps is ciphertext: no run of any file's plaintext is in it.
    stored = b"".join(p.read_bytes() for p in fleet.cache_dir.rglob("*") if p.is_file())
    assert len(stored) >= sum(size for _id, size in shards.values())
    for path in fleet.model.iterdir():
        data = path.read_bytes()
        for offset in range(0, max(1, len(data) - 32), max(1, len(data) // 64)):
            assert data[offset : offset + 32] not in stored, (path.name, offset)


def test_a_pull_through_the_cache_is_bit_exact(fleet: Fleet, tmp_path: Path) -> None:
    with RemoteRegistry(fleet.origin, fleet.tokens["org"], cache_url=fleet.cache) as remote:
        remote.pull("org/m@1", tmp_path / "pulled")
    for path in fleet.model.iterdir():
        assert (tmp_path / "pulled" / path.name).read_bytes() == path.read_bytes()


def _get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = url.split("/", 3)
    connection = http.client.HTTPConnection(parts[2], timeout=30)
    try:
        connection.request("GET", "/" + parts[3], headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_a_token_without_rights_is_refused_through_the_cache(fleet: Fleet) -> None:
    objects = _objects(fleet, "org/m@1", fleet.tokens["org"])
    cached, _size = objects["model-00001-of-00002.safetensors"]
    path = f"/v1/objects/{cached}"
    status, whole = _get(fleet.cache + path, {"Authorization": f"Bearer {fleet.tokens['org']}"})
    assert status == 200
    status, origin_bytes = _get(
        fleet.origin + path, {"Authorization": f"Bearer {fleet.tokens['org']}"}
    )
    assert status == 200 and whole == origin_bytes
    # The documented cache asks the origin about every request's token, cached bytes or not.
    assert _get(fleet.cache + path, {})[0] == 401
    assert _get(fleet.cache + path, {"Authorization": "Bearer nonsense"})[0] == 401
    other = {"Authorization": f"Bearer {fleet.tokens['other']}"}
    assert _get(fleet.cache + path, other)[0] == 404
    # A cache without that check (`public` alone, as a plain proxy_cache or a P2P network
    # without an auth hook) serves what it holds to anyone who reaches it: ciphertext,
    # useless without the key broker (docs/security.md, "Caches and object URLs").
    status, body = _get(fleet.open_cache + path, {})
    assert status == 200 and body == whole
    # ...but what it does not hold it asks the origin for, with the request's token.
    uncached = _objects(fleet, "other/x@1", fleet.tokens["other"])
    oid, _size = next(iter(uncached.values()))
    assert _get(f"{fleet.open_cache}/v1/objects/{oid}", {})[0] == 401
    assert (
        _get(
            f"{fleet.open_cache}/v1/objects/{oid}",
            {"Authorization": f"Bearer {fleet.tokens['org']}"},
        )[0]
        == 404
    )


class _Corrupting(http.server.BaseHTTPRequestHandler):
    """A cache that changes one byte of every object range it passes on."""

    origin = ""

    def do_GET(self) -> None:
        request = urllib.request.Request(
            self.origin + self.path,
            headers={
                k: v for k, v in self.headers.items() if k.lower() in ("authorization", "range")
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            data = bytearray(answer.read())
            status, headers = answer.status, dict(answer.headers.items())
        if len(data) > 100:
            data[100] ^= 0x01
        self.send_response(status)
        for name in ("Content-Range", "ETag", "Cache-Control", "Content-Type"):
            if name in headers:
                self.send_header(name, headers[name])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(bytes(data))

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def corrupting(fleet: Fleet) -> Iterator[str]:
    handler = type("Handler", (_Corrupting,), {"origin": fleet.origin})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cache_that_changes_a_byte_fails_the_load_and_the_pull_naming_the_file(
    fleet: Fleet, corrupting: str, tmp_path: Path
) -> None:
    with RemoteRegistry(fleet.origin, fleet.tokens["org"], cache_url=corrupting) as remote:
        with pytest.raises(IntegrityError, match=r"model-0000\d-of-00002\.safetensors"):
            loader.load("org/m@1", registry=remote, framework="numpy", cache=False)
        with pytest.raises(IntegrityError, match=r"\.safetensors|\.json"):
            remote.pull("org/m@1", tmp_path / "pulled")
    assert not any((tmp_path / "pulled" / path.name).exists() for path in fleet.model.iterdir())


def test_without_object_ids_or_a_cache_reads_go_to_the_server(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server from before object URLs names no ids: a client with a cache configured reads
    from the server (here the cache's address answers nothing, so a read through it would
    fail); so does a read whose file digest the caller does not give."""
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setattr(wire.DataKeys, "to_objects", lambda _self: {})
    with RemoteRegistry(fleet.origin, fleet.tokens["org"], cache_url=dead) as remote:
        remote.pull("org/m@1", tmp_path / "pulled")
        assert remote.read_ciphertext("org/m@1", "config.json", 0, 10)
    for path in fleet.model.iterdir():
        assert (tmp_path / "pulled" / path.name).read_bytes() == path.read_bytes()


def test_the_cache_url_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_REGISTRY_CACHE_URL", "cache.internal:8081")
    with pytest.raises(ConfigurationError, match="MODEL_REGISTRY_CACHE_URL"):
        RemoteRegistry("http://127.0.0.1:1", "token")
    monkeypatch.setenv("MODEL_REGISTRY_CACHE_URL", "http://cache.internal:8081/")
    with RemoteRegistry("http://127.0.0.1:1", "token") as remote:
        assert remote.cache_url == "http://cache.internal:8081"
    with RemoteRegistry("http://127.0.0.1:1", "token", cache_url="") as remote:
        assert remote.cache_url is None
    monkeypatch.delenv("MODEL_REGISTRY_CACHE_URL")
    with RemoteRegistry("http://127.0.0.1:1", "token") as remote:
        assert remote.cache_url is None
