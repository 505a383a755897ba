"""KServe's storage initializer (`model-registry storage-initializer SRC_URI DEST`, cli/kserve.py,
deploy/kserve/), run exactly as KServe runs it: a process given the InferenceService's
`storageUri` and `/mnt/models`, against a registry server (the token from the environment) and
against a home. What the serving container then finds: the pin of the resolved version, a warm
cache of ciphertext it loads from without one blob request, no plaintext weight anywhere; with
`--plaintext`, verified weight files. Failures exit non-zero with a message and leave DEST as it
was. The manifests are valid YAML with the fields KServe reads."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from cli.kserve import CACHE_DIR, _sealed_objects, parse_uri
from registry import loader
from registry.client import RemoteRegistry
from registry.errors import IntegrityError, InvalidInputError
from registry.loader.cache import Cache
from registry.prepared import read_pin
from registry.service import READER, Registry
from registry.testing.models import make_model
from tests.conftest import tree
from tests.test_api_cli import LiveServer

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kserve"
SCRIPT = Path(sys.executable).with_name("model-registry")  # the image's entrypoint


def _initialize(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init container: `model-registry storage-initializer` with KServe's arguments."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cli"]
    return subprocess.run(
        [*command, "storage-initializer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _env(
    home: Path, *, url: str | None = None, token: str | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_REGISTRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MODEL_REGISTRY_HOME"] = str(home)
    if url is not None:
        env["MODEL_REGISTRY_URL"] = url
        env["MODEL_REGISTRY_TOKEN"] = token or ""
    return {**env, **extra}


def _plaintext_marks(model: Path) -> list[bytes]:
    """Distinctive runs of each shard's tensor bytes (seeded random data)."""
    marks = []
    for shard in sorted(model.glob("*.safetensors")):
        data = shard.read_bytes()
        marks += [data[len(data) // 2 : len(data) // 2 + 48], data[-48:]]
    return marks


def _plaintext_found(dest: Path, marks: list[bytes]) -> list[str]:
    return [
        f"{path.relative_to(dest)}"
        for path in dest.rglob("*")
        if path.is_file() and any(mark in path.read_bytes() for mark in marks)
    ]


def _blob_requests(server: LiveServer) -> float:
    board = server.app.state["registry_state"].metrics
    return sum(
        sample.value
        for metric in board.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["route"].startswith("/v1/blob")
    )


def _settled(server: LiveServer) -> float:
    """The blob requests counted once the count stops moving (the server counts a request after
    its response went out, so the last ones can lag behind the client that sent them)."""
    count = _blob_requests(server)
    for _ in range(500):
        time.sleep(0.05)
        if (now := _blob_requests(server)) == count:
            return count
        count = now
    return count


def _counted(server: LiveServer, expected: float) -> float:
    """The blob requests counted, once the server has counted `expected` of them: it counts a
    request after its response went out, so the last one can lag behind the client's answer."""
    deadline = time.monotonic() + 10
    while (count := _blob_requests(server)) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def _same_tensors(loaded: dict[str, object], model: Path) -> None:
    original: dict[str, object] = {}
    for shard in model.glob("*.safetensors"):
        original.update(load_file(shard))
    assert sorted(loaded) == sorted(original)
    for name, array in original.items():
        assert loaded[name].tobytes() == array.tobytes(), name  # type: ignore[attr-defined]


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return (
        make_model(tmp_path / "m1", shards=2, shard_size=300_000, seed=31),
        make_model(tmp_path / "m2", shards=2, shard_size=300_000, seed=32),
    )


@pytest.fixture
def published(home: Path, models: tuple[Path, Path]) -> Path:
    """org/m@1 (production) and org/m@2 (newer, not promoted) in a home."""
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/m", models[0])
        registry.push("org/m", models[1])
        registry.promote("org/m@1", "production")
    return home


@pytest.fixture
def served(published: Path, tmp_path: Path) -> Iterator[tuple[LiveServer, str]]:
    with Registry.open(published) as registry:
        token = registry.create_token("kserve", role=READER, models=["org/*"])[1]
        with LiveServer(registry, tmp_path / "staging") as server:
            yield server, token


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    """KServe's /mnt/models: an empty folder (an emptyDir) the init container writes into."""
    path = tmp_path / "pod" / "mnt" / "models"
    path.mkdir(parents=True)
    return path


def test_through_a_server_the_serving_side_loads_from_the_cache_alone(
    served: tuple[LiveServer, str], models: tuple[Path, Path], mnt: Path, tmp_path: Path
) -> None:
    server, token = served
    done = _initialize(
        "mr://org/m:production", str(mnt), env=_env(tmp_path, url=server.url, token=token)
    )
    assert done.returncode == 0, done.stderr
    assert "initialized" in done.stdout and "org/m@1" in done.stdout
    pin = read_pin(mnt)
    assert (pin.ref, pin.requested) == ("org/m@1", "org/m:production")  # the alias, not @2
    assert not list(mnt.rglob("*.safetensors"))
    assert {e.path for e in pin.streamed} == {p.name for p in models[0].glob("*.safetensors")}
    assert tree(mnt)["config.json"] == (models[0] / "config.json").read_bytes()
    assert not list(mnt.glob(".model-registry-staging-*"))
    assert not _plaintext_found(mnt, _plaintext_marks(models[0]))

    # The serving container: the pin's exact version, keys from the broker, bytes from the cache.
    cache = Cache(mnt / CACHE_DIR)
    assert len(cache.entries()) == len(pin.streamed)
    with RemoteRegistry(server.url, token) as remote:
        start = _settled(server)
        for entry in pin.streamed:  # the entries are the sealed objects, byte for byte
            held = cache.path_of(entry.digest).read_bytes()
            assert held == remote.read_ciphertext(pin.ref, entry.path, 0, len(held) + 1)
        before = _counted(server, start + len(pin.streamed))
        state = loader.load(pin.pinned_ref, registry=remote, cache=cache, framework="numpy")
        assert _settled(server) == before  # not one range downloaded
    assert state.version.digest == pin.digest
    assert state.stats.cache_hits == len(pin.streamed)
    _same_tensors(state, models[0])


def test_the_initializer_needs_no_torch(
    served: tuple[LiveServer, str], mnt: Path, tmp_path: Path
) -> None:
    """The image installs no torch (deploy/kserve/Dockerfile): nothing the command runs
    imports it, nor numpy or safetensors."""
    server, token = served
    listing = tmp_path / "modules.json"
    run = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: open(sys.argv[1], 'w').write(json.dumps(sorted(sys.modules))))\n"
        "from cli.main import main\n"
        "main(sys.argv[2:], prog_name='model-registry')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, str(listing), "storage-initializer", "mr://org/m", str(mnt)],
        env=_env(tmp_path, url=server.url, token=token),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(listing.read_text()))
    assert "registry.loader.cache" in modules  # it did warm the cache
    assert not {"torch", "numpy", "safetensors"} & modules


def test_a_read_only_cache_still_serves_its_entries(
    served: tuple[LiveServer, str],
    models: tuple[Path, Path],
    mnt: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KServe mounts /mnt/models read-only into the serving container."""
    server, token = served
    env = _env(tmp_path, url=server.url, token=token)
    assert _initialize("mr://org/m:production", str(mnt), env=env).returncode == 0
    cache = Cache(mnt / CACHE_DIR)

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    opened = os.open

    def no_create(path: object, flags: int, *args: object) -> int:
        if flags & os.O_CREAT:
            read_only()
        return opened(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "utime", read_only)
    monkeypatch.setattr(os, "open", no_create)
    with RemoteRegistry(server.url, token) as remote:
        before = _settled(server)
        state = loader.load("org/m@1", registry=remote, cache=cache, framework="numpy")
        assert _settled(server) == before
        _same_tensors(state, models[0])
        # A miss (a version the cache lacks) is read from the server, with no copy kept.
        other = loader.load("org/m@2", registry=remote, cache=cache, framework="numpy")
    _same_tensors(other, models[1])
    assert other.stats.cache_hits == 0 and len(cache.entries()) == 2


def test_from_a_home(published: Path, models: tuple[Path, Path], mnt: Path) -> None:
    done = _initialize("mr://org/m@2", str(mnt), env=_env(published))
    assert done.returncode == 0, done.stderr
    assert "no cache needed" in done.stdout  # a home's local store is read in place
    pin = read_pin(mnt)
    assert pin.ref == "org/m@2" and not (mnt / CACHE_DIR).exists()
    assert not _plaintext_found(mnt, _plaintext_marks(models[1]))
    with Registry.open(published) as registry:
        state = loader.load(pin.pinned_ref, registry=registry, framework="numpy")
    _same_tensors(state, models[1])


def test_plaintext_writes_verified_weight_files(
    served: tuple[LiveServer, str], models: tuple[Path, Path], mnt: Path, tmp_path: Path
) -> None:
    server, token = served
    env = _env(tmp_path, url=server.url, token=token)
    done = _initialize("mr://org/m:production", str(mnt), "--plaintext", env=env)
    assert done.returncode == 0, done.stderr
    assert "plaintext" in done.stdout
    pin = read_pin(mnt)
    assert pin.ref == "org/m@1" and not pin.streamed and not (mnt / CACHE_DIR).exists()
    written = {k: v for k, v in tree(mnt).items() if k != "registry.json"}
    assert written == tree(models[0])  # every file, the weights included, byte for byte
    assert _plaintext_found(mnt, _plaintext_marks(models[0]))  # what the other tests rule out


def test_a_second_run_replaces_the_first_and_reuses_its_cache(
    served: tuple[LiveServer, str],
    models: tuple[Path, Path],
    mnt: Path,
    tmp_path: Path,
    published: Path,
) -> None:
    """An init container run again in the same pod (its emptyDir kept)."""
    server, token = served
    env = _env(tmp_path, url=server.url, token=token)
    start = _settled(server)
    assert _initialize("mr://org/m:production", str(mnt), env=env).returncode == 0
    first = _settled(server) - start
    inodes = {p.name: p.stat().st_ino for p in Cache(mnt / CACHE_DIR).entries()}
    again = _initialize("mr://org/m:production", str(mnt), env=env)
    assert again.returncode == 0, again.stderr
    assert "2 already there" in again.stdout
    # The weights were checked in the cache, not downloaded: only the small files were.
    assert _settled(server) - start - first < first
    assert {p.name: p.stat().st_ino for p in Cache(mnt / CACHE_DIR).entries()} == inodes

    with Registry.open(published) as registry:
        registry.promote("org/m@2", "production")
    moved = _initialize("mr://org/m:production", str(mnt), env=env)
    assert moved.returncode == 0, moved.stderr
    pin = read_pin(mnt)
    assert pin.ref == "org/m@2"
    cache = Cache(mnt / CACHE_DIR)
    assert sorted(cache.entries()) == sorted(cache.path_of(e.digest) for e in pin.streamed)
    assert not [p for p in mnt.iterdir() if p.name.startswith(".model-registry-staging")]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("uri", "auth", "code", "says"),
    [
        ("s3://bucket/org/m", "good", 3, "not an mr:// URI"),
        ("mr://", "good", 3, "mr://"),
        ("mr://Org/M:production", "good", 3, "invalid"),
        ("mr://org/m@x", "good", 3, "invalid version"),
        ("mr://org/m@9", "good", 4, "org/m@9"),
        ("mr://org/m:production", "bad", 11, ""),
        ("mr://org/m:production", "unreachable", 9, "cannot reach"),
    ],
    ids=["scheme", "empty", "upper-case", "version", "missing", "bad-token", "unreachable"],
)
def test_a_failure_exits_non_zero_and_leaves_dest_as_it_was(
    served: tuple[LiveServer, str],
    tmp_path: Path,
    mnt: Path,
    uri: str,
    auth: str,
    code: int,
    says: str,
) -> None:
    server, token = served
    url = f"http://127.0.0.1:{_closed_port()}" if auth == "unreachable" else server.url
    env = _env(tmp_path, url=url, token="mrt_000000000000_" + "x" * 43 if auth == "bad" else token)
    absent = tmp_path / "absent" / "models"
    for dest in (mnt, absent):
        done = _initialize(uri, str(dest), env=env)
        assert done.returncode == code, (done.stdout, done.stderr)
        assert "error:" in done.stderr and says in done.stderr
        assert "Traceback" not in done.stderr
    assert list(mnt.iterdir()) == [] and not absent.exists()


def test_a_failure_keeps_an_earlier_output(
    served: tuple[LiveServer, str], mnt: Path, tmp_path: Path
) -> None:
    server, token = served
    assert (
        _initialize(
            "mr://org/m:production", str(mnt), env=_env(tmp_path, url=server.url, token=token)
        ).returncode
        == 0
    )
    before = tree(mnt)
    bad = _env(tmp_path, url=server.url, token="mrt_000000000000_" + "x" * 43)
    assert _initialize("mr://org/m@2", str(mnt), env=bad).returncode == 11
    assert tree(mnt) == before


def test_a_folder_holding_something_else_is_refused(published: Path, mnt: Path) -> None:
    (mnt / "notes.txt").write_text("mine")
    done = _initialize("mr://org/m@1", str(mnt), env=_env(published))
    assert done.returncode == 5 and "not empty" in done.stderr
    assert tree(mnt) == {"notes.txt": b"mine"}


def test_uris() -> None:
    assert parse_uri("mr://org/llama:production") == "org/llama:production"
    assert parse_uri("mr://org/llama@12") == "org/llama@12"
    assert parse_uri("mr://llama@blake3:0123456789ab") == "llama@blake3:0123456789ab"
    for bad in ("org/llama", "mr:/org/llama", "mr://org/llama/", "mr:///org/llama", "mr://a//b"):
        with pytest.raises(InvalidInputError):
            parse_uri(bad)


def test_cache_fill_verifies_in_memory_and_replaces_a_damaged_entry(
    published: Path, tmp_path: Path
) -> None:
    """`Cache.fill`, on a home's ciphertext (the initializer's other source)."""
    with Registry.open(published) as registry:
        result = registry.prepare("org/m@1", tmp_path / "prepared")
        objects = list(_sealed_objects(registry, result))
        cache = Cache(tmp_path / "cache")
        entry, key, read_range = objects[0]
        assert cache.fill(entry.digest, key, read_range, size=entry.size)
        held = cache.path_of(entry.digest)
        sealed = held.read_bytes()
        assert not cache.fill(entry.digest, key, read_range, size=entry.size)  # kept
        damaged = bytearray(sealed)
        damaged[len(damaged) // 2] ^= 1
        held.write_bytes(damaged)
        assert cache.fill(entry.digest, key, read_range, size=entry.size)  # replaced
        assert held.read_bytes() == sealed

        # Upstream bytes that fail: nothing admitted, nothing left beside the entries.
        other, other_key, other_range = objects[1]

        def tampered(offset: int, length: int) -> bytes:
            data = bytearray(other_range(offset, length))
            if offset + len(data) > len(sealed) // 2 > offset:
                data[len(sealed) // 2 - offset] ^= 1
            return bytes(data)

        with pytest.raises(IntegrityError):
            cache.fill(other.digest, other_key, tampered, size=other.size)
        with pytest.raises(IntegrityError):  # the wrong key
            cache.fill(other.digest, key, other_range, size=other.size)
    assert [p.name for p in cache.root.iterdir() if p.name.startswith(".")] == []
    assert cache.entries() == [held]


def _yaml(name: str) -> list[dict[str, object]]:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def test_the_cluster_storage_container_is_what_kserve_reads() -> None:
    (csc,) = [d for d in _yaml("cluster-storage-container.yaml") if d["kind"] != "Secret"]
    assert csc["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert csc["kind"] == "ClusterStorageContainer"
    spec = csc["spec"]
    assert isinstance(spec, dict)
    container = spec["container"]
    assert container["name"] == "storage-initializer"  # KServe finds its init container so
    assert container["image"] and "args" not in container and "command" not in container
    env = {e["name"]: e for e in container["env"]}
    for name in ("MODEL_REGISTRY_URL", "MODEL_REGISTRY_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"]
    assert spec["supportedUriFormats"] == [{"prefix": "mr://"}]
    assert spec.get("workloadType", "initContainer") == "initContainer"
    # The image's entrypoint takes KServe's two arguments as they come.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert entrypoint and json.loads(entrypoint[1]) == ["model-registry", "storage-initializer"]
    assert not re.search(r"^RUN .*torch", dockerfile, re.MULTILINE)  # a small image


def test_the_inference_service_loads_through_the_plugin() -> None:
    (isvc,) = _yaml("inference-service.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]  # type: ignore[index]
    assert parse_uri(model["storageUri"])
    args = model["args"]
    assert args[args.index("--load-format") + 1] == "model-registry"
    env = {e["name"]: e for e in model["env"]}
    assert env["MODEL_REGISTRY_CACHE_DIR"]["value"] == f"/mnt/models/{CACHE_DIR}"
    for name in ("MODEL_REGISTRY_URL", "MODEL_REGISTRY_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["key"]
