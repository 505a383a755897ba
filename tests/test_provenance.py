"""Provenance in the signed manifest (issue 20, item 3), and signer policies (item 2's rule):
per-file SHA-256 recorded at push, metadata and lineage signed with the version and never
changed, a base model pinned by digest and its chain shown, bad input refused with nothing
written, and through the REST API as locally."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from registry.catalog.models import VersionMeta
from registry.client import RemoteRegistry
from registry.errors import InvalidInputError, NotFoundError, PolicyError
from registry.manifest import SCHEMA
from registry.provenance import Dataset, ProvenanceRequest, parse_meta
from registry.service import ADMIN, Registry
from registry.testing.models import make_model
from tests.test_api_cli import LiveServer

DATASET = "sha256:" + "ab" * 32


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model")


def _request(**overrides: object) -> ProvenanceRequest:
    stated: dict[str, object] = {
        "meta": parse_meta(["lr=2e-5", "epochs=3"]),
        "source_repo": "https://github.com/acme/train",
        "source_commit": "0a1b2c3",
        "run_url": "https://ci.acme.dev/runs/7",
        "datasets": (Dataset("ultrachat", DATASET),),
    }
    stated.update(overrides)
    return ProvenanceRequest(**stated)  # type: ignore[arg-type]


def test_a_push_records_sha256_and_signs_its_provenance(registry: Registry, model: Path) -> None:
    base = registry.push("org/base", model, message="base").version
    (model / "notes.txt").write_text("fine-tuned")
    result = registry.push(
        "org/ft", model, message="ft", provenance=_request(base_model="org/base")
    )
    details = registry.show(result.version.ref)
    manifest = details.manifest
    assert manifest.schema == SCHEMA
    for entry in manifest.files:  # SHA-256 of the bytes, taken in the push's one read
        assert entry.sha256 == hashlib.sha256((model / entry.path).read_bytes()).hexdigest()
    provenance = manifest.provenance
    assert provenance is not None
    assert provenance.meta == (("epochs", "3"), ("lr", "2e-5"))
    assert provenance.base_model is not None
    assert (provenance.base_model.ref, provenance.base_model.digest) == (base.ref, base.digest)
    assert provenance.datasets == (Dataset("ultrachat", DATASET),)
    # Signed: it is part of the canonical manifest the version's digest names.
    assert manifest.digest == result.version.digest
    assert manifest.to_dict()["provenance"]["source"]["commit"] == "0a1b2c3"
    with registry.catalog.engine.connect() as connection:
        rows = dict(
            (key, value)
            for key, value in connection.execute(select(VersionMeta.key, VersionMeta.value))
        )
    assert rows == {
        "meta.epochs": "3",
        "meta.lr": "2e-5",
        "source.repo": "https://github.com/acme/train",
        "source.commit": "0a1b2c3",
        "source.run_url": "https://ci.acme.dev/runs/7",
        "base_model": "org/base@1",
        "base_model.digest": base.digest,
        "dataset.ultrachat": DATASET,
    }


def test_provenance_makes_a_version_of_its_own_and_plain_repushes_dedupe(
    registry: Registry, model: Path
) -> None:
    first = registry.push("org/m", model).version
    again = registry.push("org/m", model)
    assert not again.created and again.version.digest == first.digest
    stated = registry.push("org/m", model, provenance=_request())
    assert stated.created and stated.version.number == 2
    # The same statement again is that version; another statement is another version.
    assert not registry.push("org/m", model, provenance=_request()).created
    other = registry.push("org/m", model, provenance=_request(source_commit="ffff"))
    assert other.created and other.version.number == 3


def test_bad_provenance_is_refused_and_nothing_is_written(registry: Registry, model: Path) -> None:
    cases: list[tuple[ProvenanceRequest, type[Exception]]] = [
        (_request(base_model="org/nothing"), NotFoundError),
        (_request(base_model="Not A Ref"), InvalidInputError),
        (_request(source_repo="x" * 2000), InvalidInputError),
        (_request(run_url="line\nbreak"), InvalidInputError),
    ]
    for stated, error in cases:
        with pytest.raises(error):
            registry.push("org/refused", model, provenance=stated)
    for meta in (["BAD=1"], ["novalue"], ["a=1", "a=2"]):
        with pytest.raises(InvalidInputError):
            parse_meta(meta)
    assert "org/refused" not in [m.name for m in registry.models()]


def test_show_prints_provenance_and_the_chain_of_base_models(
    home: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry.init(home)
    runner = CliRunner()
    with Registry.open(home) as registry:
        registry.push("org/a", model)
        for name, base, note in (("org/b", "org/a", "b"), ("org/c", "org/b@1", "c")):
            (model / "note.txt").write_text(note)
            registry.push(name, model, provenance=ProvenanceRequest(base_model=base))
    shown = runner.invoke(main, ["show", "org/c"])
    assert shown.exit_code == 0, shown.output
    assert "base model org/b@1" in shown.output and "<- org/a@1" in shown.output
    as_json = json.loads(runner.invoke(main, ["show", "org/c", "--json"]).output)
    assert as_json["manifest"]["provenance"]["base_model"]["name"] == "org/b"
    pushed = runner.invoke(
        main,
        [
            "push",
            "org/d",
            str(model),
            "--meta",
            "team=nlp",
            "--dataset",
            f"web@{DATASET}",
            "--source-repo",
            "https://git/x",
            "--base-model",
            "org/c",
            "-q",
        ],
    )
    assert pushed.exit_code == 0, pushed.output
    shown = runner.invoke(main, ["show", "org/d"]).output
    assert "meta       team = nlp" in shown and f"dataset    web {DATASET}" in shown
    refused = runner.invoke(main, ["push", "org/e", str(model), "--dataset", "web@nohex", "-q"])
    assert refused.exit_code == 3 and "NAME@DIGEST" not in refused.output.split("\n")[0]


def test_provenance_through_the_rest_api(
    home: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry.init(home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Registry.open(home) as registry:
        base = registry.push("org/base", model).version
        token = registry.create_token("ci", role=ADMIN, models=["*"])[1]
        (model / "notes.txt").write_text("remote")
        with (
            LiveServer(registry, tmp_path / "staging") as server,
            RemoteRegistry(server.url, token) as remote,
        ):
            result = remote.push("org/remote", model, provenance=_request(base_model="org/base"))
        details = registry.show(result.version.ref)
    provenance = details.manifest.provenance
    assert provenance is not None and provenance.base_model is not None
    assert provenance.base_model.digest == base.digest
    assert provenance.source_commit == "0a1b2c3"
    assert details.manifest.files[0].sha256 is not None


@pytest.fixture
def signed_versions(registry: Registry, model: Path) -> Registry:
    """org/p@1 unsigned, org/p@2 recorded as signed by key:abc (its version_meta row, what
    an OpenSSF signature checked at push leaves)."""
    registry.push("org/p", model)
    (model / "notes.txt").write_text("2")
    second = registry.push("org/p", model, provenance=_request()).version
    from registry.catalog.models import Version

    with registry.catalog.engine.begin() as connection:
        version_id = connection.execute(
            select(Version.id).where(Version.digest == second.digest)
        ).scalar_one()
        connection.execute(
            VersionMeta.__table__.insert().values(
                version_id=version_id, key="openssf.signer", value="key:abc"
            )
        )
    return registry


def test_a_signer_policy_refuses_moves_to_unsigned_versions(signed_versions: Registry) -> None:
    registry = signed_versions
    registry.promote("org/p@1", "production", reason="before the policy")
    registry.set_signer_policy("org/p", ["abc"], alias="production")
    assert registry.signer_policies("org/p") == {"production": ("abc",)}
    count = len(registry.audit_events(limit=1000))
    registry.promote("org/p@2", "production", reason="signed")  # by key:abc
    with pytest.raises(PolicyError, match="no OpenSSF signature; org/p:production requires"):
        registry.rollback("org/p", "production", reason="back to unsigned")
    assert registry.resolve("org/p:production").number == 2
    registry.promote("org/p@1", "staging")  # another alias: no policy
    registry.set_signer_policy("org/p", ["key:" + "0" * 64])  # every alias: another key
    with pytest.raises(PolicyError, match="a signature by key:abc"):
        registry.promote("org/p@2", "canary")
    registry.clear_signer_policy("org/p")
    registry.promote("org/p@2", "canary")
    events = registry.audit_events(limit=1000)
    actions = [e.action for e in events[: len(events) - count]]
    assert actions.count("signer-policy") == 2 and actions.count("rollback") == 0
    with pytest.raises(NotFoundError):
        registry.clear_signer_policy("org/p", alias="nothing")
    with pytest.raises(InvalidInputError):
        registry.set_signer_policy("org/p", [])
    for never in ("key:e5c99", "bogus:xyz", " padded"):  # could never match: refused
        with pytest.raises(InvalidInputError):
            registry.set_signer_policy("org/p", [never])
    reader = Registry.open(registry.settings.home, role="reader")
    with pytest.raises(Exception, match="may not change signer policies"):
        reader.set_signer_policy("org/p", ["x"])
    reader.close()


def test_search_finds_pushed_metadata_as_the_push_named_it(registry: Registry, model: Path) -> None:
    """`push --meta lr=2e-5` is found by `search lr=2e-5` (stored as meta.lr), and a base model
    named without its number finds every version made from any of its versions."""
    registry.push("org/base", model)
    (model / "notes.txt").write_text("ft")
    made = registry.push("org/ft", model, provenance=_request(base_model="org/base")).version
    for query in ("lr=2e-5", "meta.lr=2e-5", "base_model=org/base", "base_model=org/base@1"):
        hits = registry.search(query).hits
        assert [h.version.ref for h in hits] == [made.ref], query
    for query in ("lr=2e-6", "base_model=org/bas", "base_model=org/base@2"):
        assert registry.search(query).hits == (), query
