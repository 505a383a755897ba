"""The CLI through a live server (uvicorn on loopback): the same output and exit codes as on the
local home, a push killed mid-upload that resumes sending only what is missing, and two server
processes on one PostgreSQL catalog taking concurrent pushes and promotes."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner

from cli.main import main
from registry.api.app import create_app
from registry.client import RemoteRegistry
from registry.digest import hash_file
from registry.service import ADMIN, READER, Registry
from registry.testing.models import make_model
from tests.apikit import api_settings, wait_healthy
from tests.conftest import tree


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


MiB = 1024 * 1024
PARTS = "objects/sessions/*/*/*"  # the parts an upload session holds in its staging store


class LiveServer:
    """The API of an open registry served by uvicorn in a thread of the test process."""

    def __init__(self, registry: Registry, staging: Path, *, part_size: int = MiB) -> None:
        api_settings(registry, staging_dir=staging, part_size=part_size)
        self.app = create_app(registry)
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def part_puts(self) -> float:
        board = self.app.state["registry_state"].metrics
        total = 0.0
        for metric in board.requests.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_total")
                    and labels["method"] == "PUT"
                    and "/parts/" in labels["route"]
                    and labels["status"] == "204"
                ):
                    total += sample.value
        return total


@pytest.fixture
def served(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    Registry.init(home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(home) as registry:
        tokens = {
            ADMIN: registry.create_token("ci-admin", role=ADMIN, models=["*"])[1],
            READER: registry.create_token("ci-reader", role=READER, models=["org/*"])[1],
        }
        with LiveServer(registry, tmp_path / "staging") as server:
            yield server, tokens


def _cli(*args: str, url: str | None = None, token: str | None = None) -> object:
    env = {}
    if url is not None:
        env["MODEL_REGISTRY_URL"] = url
        env["MODEL_REGISTRY_TOKEN"] = token or ""
    return CliRunner(env=env).invoke(main, list(args))


def test_cli_through_the_server_matches_the_local_home(
    served: tuple[LiveServer, dict[str, str]], tmp_path: Path, home: Path
) -> None:
    server, tokens = served
    remote = {"url": server.url, "token": tokens[ADMIN]}
    model = make_model(tmp_path / "model", shards=2, shard_size=70_000, seed=4)
    pushed = _cli("push", "org/llama", str(model), "-m", "ci", "--json", "-q", **remote)
    assert pushed.exit_code == 0, pushed.output  # type: ignore[attr-defined]
    remote_version = json.loads(pushed.stdout)  # type: ignore[attr-defined]
    local = _cli("push", "org/llama", str(model), "--json", "-q")
    assert json.loads(local.stdout)["digest"] == remote_version["digest"]  # type: ignore[attr-defined]
    assert json.loads(local.stdout)["created"] is False  # type: ignore[attr-defined]

    for args in (
        ["ls", "--json"],
        ["ls", "org/llama", "--json"],
        ["show", "org/llama@1", "--json"],
    ):
        here, there = _cli(*args), _cli(*args, **remote)
        assert there.exit_code == here.exit_code == 0, there.output  # type: ignore[attr-defined]
        assert json.loads(there.stdout) == json.loads(here.stdout), args  # type: ignore[attr-defined]

    out = _cli("pull", "org/llama@1", str(tmp_path / "out"), "-q", **remote)
    assert out.exit_code == 0, out.output  # type: ignore[attr-defined]
    assert tree(tmp_path / "out") == tree(model)
    promoted = _cli("promote", "org/llama@1", "production", "--reason", "evals", **remote)
    assert promoted.exit_code == 0, promoted.output  # type: ignore[attr-defined]
    history = _cli("history", "org/llama", "--json", **remote)
    assert json.loads(history.stdout)[0]["moved_by"].startswith("token:ci-admin:")  # type: ignore[attr-defined]
    assert _cli("audit", "verify", **remote).exit_code == 0  # type: ignore[attr-defined]
    hold = _cli("hold", "set", "org/llama@1", "--reason", "audit", **remote)
    assert hold.exit_code == 0, hold.output  # type: ignore[attr-defined]
    # The text a person reads is the same too (the server serves this very home).
    for args in (
        ["ls"],
        ["ls", "org/llama"],
        ["show", "org/llama@1"],
        ["history", "org/llama"],
        ["alias", "ls", "org/llama"],
        ["retention", "show", "org/llama"],
        ["retention", "plan", "org/llama"],
        ["hold", "ls"],
        ["verify", "org/llama@1", "-q"],
    ):
        here, there = _cli(*args), _cli(*args, **remote)
        assert there.exit_code == here.exit_code == 0, (args, there.output)  # type: ignore[attr-defined]
        assert there.stdout == here.stdout, args  # type: ignore[attr-defined]

    # Exit codes are the same as on the local home.
    assert _cli("show", "org/none", **remote).exit_code == 4  # type: ignore[attr-defined]
    reader = {"url": server.url, "token": tokens[READER]}
    assert _cli("gc", "--dry-run", **reader).exit_code == 10  # type: ignore[attr-defined]
    assert _cli("ls", **{"url": server.url, "token": "mrt_bad"}).exit_code == 11  # type: ignore[attr-defined]
    for args, name in (
        (["regions", "status"], "regions status"),
        (["verify", "--all"], "scrub"),
        (["catalog", "journal"], "journal status"),
        (["drill"], "drill"),
    ):
        not_here = _cli(*args, **remote)
        assert not_here.exit_code == 3, (args, not_here.output)  # type: ignore[attr-defined]
        assert f"`{name}` is not available" in not_here.output  # type: ignore[attr-defined]
        assert "run it on the registry server" in not_here.output  # type: ignore[attr-defined]


def test_a_killed_push_resumes_and_sends_only_the_missing_parts(
    served: tuple[LiveServer, dict[str, str]],
    tmp_path: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, tokens = served
    model = make_model(tmp_path / "model", shards=2, shard_size=12_000_000, seed=8)
    env = {
        **os.environ,
        "MODEL_REGISTRY_URL": server.url,
        "MODEL_REGISTRY_TOKEN": tokens[ADMIN],
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    staging = tmp_path / "staging"
    first = subprocess.Popen(
        [sys.executable, "-m", "cli", "push", "org/big", str(model), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Kill it once the server holds some parts, well before all of them.
    deadline = time.monotonic() + 60
    while not list(staging.glob(PARTS)):
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    # Parts whose bodies had fully arrived still land after the kill: wait until all settled.
    settled = None
    while True:
        now = (len(list(staging.glob(PARTS))), server.part_puts())
        if now == settled:
            break
        settled = now
        time.sleep(0.3)
    received = len(list(staging.glob(PARTS)))
    session_id = next(staging.glob("objects/sessions/*")).name
    with Registry.open(home) as registry:
        session = registry._context.catalog.upload(session_id)
    assert session is not None
    per_part = session.chunk_size * session.chunks_per_part
    total = sum(-(-entry.size // per_part) for entry in session.files)
    assert 0 < received < total
    before = server.part_puts()

    resumed = CliRunner(
        env={"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": tokens[ADMIN]}
    ).invoke(main, ["push", "org/big", str(model), "--json", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert server.part_puts() - before == total - received  # nothing sent twice
    version = json.loads(resumed.stdout)
    with Registry.open(home) as registry:
        local = registry.push("org/big", model)  # the same bytes, pushed directly
        assert not local.created and local.version.digest == version["digest"]
        registry.pull("org/big@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)


@pytest.mark.postgres
def test_a_refused_part_is_answered_not_cut_off(
    served: tuple[LiveServer, dict[str, str]],
) -> None:
    """A part refused before its body is read (bad token, rate limit) still gets its answer: the
    server reads and drops the body, so an HTTP/1.1 client, which reads the answer only after
    sending, sees a 401 or a 429 with Retry-After and not a broken connection."""
    import http.client

    server, tokens = served
    body = bytes(32 * 1024 * 1024)  # more than loopback's socket buffers hold
    target = "/v1/uploads/" + "0" * 32 + "/files/0/parts/0"
    state = server.app.state["registry_state"]
    state.transfer_limiter.burst, state.transfer_limiter.rate = 1, 0.01
    state.transfer_limiter._buckets.clear()
    answers = []
    for token in ("mrt_000000000000_" + "x" * 43, tokens[ADMIN], tokens[ADMIN]):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request(
                "PUT", target, body=body, headers={"Authorization": f"Bearer {token}"}
            )
            response = connection.getresponse()
            answers.append((response.status, response.getheader("retry-after"), response.read()))
        finally:
            connection.close()
    (bad, _none, bad_body), (missing, _, _), (limited, retry_after, limited_body) = answers
    assert bad == 401 and json.loads(bad_body)["error"]["code"] == "unauthenticated"
    assert missing == 404  # the first admin call took the bucket's one token; no such session
    assert limited == 429 and json.loads(limited_body)["error"]["code"] == "rate_limited"
    assert retry_after is not None and int(retry_after) >= 1


def test_a_push_waits_out_rate_limits_on_parts(
    served: tuple[LiveServer, dict[str, str]], tmp_path: Path
) -> None:
    server, tokens = served
    state = server.app.state["registry_state"]
    # Four parts at once against a bucket of two: some are refused, and each refused part
    # finds tokens again after its Retry-After (1 s here), even on a loaded machine.
    state.transfer_limiter.burst, state.transfer_limiter.rate = 2, 20.0
    model = make_model(tmp_path / "model", shards=2, shard_size=300_000, seed=12)
    with RemoteRegistry(server.url, tokens[ADMIN]) as remote:
        result = remote.push("org/limited", model)
        assert remote.last_push_sent == sum(p.stat().st_size for p in model.iterdir())
        remote.pull(result.version.ref, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    refused = sum(
        sample.value
        for metric in state.metrics.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["status"] == "429"
    )
    assert refused > 0  # the limit did bite, and the push still completed


def test_two_server_processes_on_one_postgres_catalog(
    home: Path, tmp_path: Path, postgres_url: str
) -> None:
    Registry.init(home, catalog_url=postgres_url)
    with Registry.open(home) as registry:
        token = registry.create_token("ci", role=ADMIN, models=["*"])[1]
    ports = [_free_port(), _free_port()]
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_healthy(port)
        models = [
            make_model(tmp_path / f"m{i}", shards=1, shard_size=30_000, seed=i) for i in range(6)
        ]

        def push_and_promote(index: int) -> None:
            url = f"http://127.0.0.1:{ports[index % 2]}"
            with RemoteRegistry(url, token) as remote:
                result = remote.push("org/shared", models[index])
                for _ in range(2):
                    remote.promote(result.version.ref, "production", reason=f"from {index}")

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(push_and_promote, range(6)))
        with Registry.open(home) as registry:
            assert [v.number for v in registry.versions("org/shared")] == [1, 2, 3, 4, 5, 6]
            assert len({v.digest for v in registry.versions("org/shared")}) == 6
            moves = registry.history("org/shared", "production")
            assert moves[0].previous is None
            for before, after in itertools.pairwise(moves):
                assert after.previous == before.number
            assert registry.resolve("org/shared:production").number == moves[-1].number
            assert registry.verify_audit().ok
            actors = {e.actor for e in registry.audit_events(limit=1000) if e.action == "push"}
            assert actors and all(re.match(r"token:ci:[0-9a-f]{12}$", a) for a in actors)
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            process.wait(30)


def test_a_pull_of_many_files_reuses_a_few_connections(
    served: tuple[LiveServer, dict[str, str]], tmp_path: Path
) -> None:
    """Every file's ranges are fetched by a fresh set of threads: connections must come from
    one pool, or a model of a thousand files would open a thousand sockets."""
    server, tokens = served
    model = make_model(tmp_path / "model", shards=2, shard_size=40_000, seed=13)
    for i in range(40):
        (model / f"extra-{i:02d}.json").write_text(json.dumps({"i": i}))
    with RemoteRegistry(server.url, tokens[ADMIN]) as remote:
        result = remote.push("org/many", model)
        remote.pull(result.version.ref, tmp_path / "out")
        kept = len(remote._transport._idle)
    assert tree(tmp_path / "out") == tree(model)
    assert 1 <= kept <= 8, kept


def test_a_push_past_the_tokens_staging_allowance_exits_18_and_opens_nothing(
    served: tuple[LiveServer, dict[str, str]], tmp_path: Path
) -> None:
    """The CLI through a server: a push the token may not stage gets the server's message and
    hint, and its own exit status (18, `quota_exceeded`), with no session left open."""
    server, tokens = served
    registry = server.app.state["registry_state"].registry
    api_settings(registry, staging_bytes_per_token=MiB)
    model = make_model(tmp_path / "big", shards=2, shard_size=MiB, seed=31)

    result = _cli("push", "org/big", str(model), url=server.url, token=tokens[ADMIN])

    assert result.exit_code == 18, result.output  # type: ignore[attr-defined]
    output = result.output  # type: ignore[attr-defined]
    assert "bytes a token may stage at once" in output
    assert "staging_bytes_per_token" in output
    assert registry._context.catalog.idle_uploads(datetime.max.replace(tzinfo=UTC)) == []
    with RemoteRegistry(server.url, tokens[ADMIN]) as remote:
        assert remote.models() == []


def test_a_push_resuming_a_session_of_an_earlier_release_starts_a_new_one(
    served: tuple[LiveServer, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an upgrade, the client's saved session was opened by the earlier release: the
    server answers it as gone (no key handed out for it), and the push opens a new session and
    completes, with nothing more asked of the user."""
    from sqlalchemy import update

    from registry.catalog.models import UploadFile
    from registry.client import upload as client_upload

    server, tokens = served
    model = make_model(tmp_path / "model", shards=1, shard_size=100_000, seed=61)
    state = tmp_path / "state"
    monkeypatch.setattr(client_upload, "resume_file", lambda identity: state)
    registry = server.app.state["registry_state"].registry
    with RemoteRegistry(server.url, tokens[ADMIN]) as remote:
        described = [
            {"path": p.name, "size": p.stat().st_size, "digest": hash_file(p)}
            for p in sorted(model.iterdir())
        ]
        old = remote._json("POST", "/v1/uploads", json={"model": "org/m", "files": described})
        with registry._context.catalog.engine.begin() as connection:
            connection.execute(
                update(UploadFile)
                .where(UploadFile.session_id == old["id"])
                .values(session_key=None)
            )
        state.write_text(old["id"])
        result = remote.push("org/m", model)
    assert result.version.number == 1
    assert not state.exists()  # the new session committed; the old one idles out
    assert registry._context.catalog.upload(old["id"]) is not None
    registry.pull("org/m@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
