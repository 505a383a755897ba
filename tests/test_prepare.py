"""`prepare`: a version's small files in a folder, verified like a pull, pinned by registry.json;
the weights never written there unless asked; idempotent, and safe to interrupt."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import (
    DestinationExistsError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from registry.prepared import PIN_NAME, Pin, read_pin
from registry.service import READER, Registry
from registry.testing.models import make_model
from tests.conftest import tree
from tests.test_api_cli import LiveServer

SMALL = {
    "config.json": b'{"model_type": "llama", "hidden_size": 8}\n',
    "generation_config.json": b'{"do_sample": false}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {"a": 0}}}\n',
    "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}\n',
    "templates/chat [v2].jinja": b"{% for m in messages %}{{ m }}{% endfor %}\n",
}


def _model(tmp_path: Path, name: str, seed: int, **changes: bytes) -> Path:
    folder = make_model(tmp_path / name, shards=2, shard_size=40_000, seed=seed)
    for path, data in {**SMALL, **changes}.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def _weights(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}


def _small(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree(folder).items() if not k.endswith(".safetensors")}


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> tuple[Registry, Path, Path]:
    first = _model(tmp_path, "v1", 1)
    second = _model(
        tmp_path, "v2", 2, **{"config.json": b'{"model_type": "llama", "hidden_size": 16}\n'}
    )
    (second / "templates" / "chat [v2].jinja").unlink()
    (second / "special_tokens_map.json").write_bytes(b'{"eos": "</s>"}\n')
    registry.push("org/m", first)
    registry.promote("org/m@1", "production")
    registry.push("org/m", second)
    return registry, first, second


def test_prepare_writes_the_small_files_verified_and_pins_the_version(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, first, _second = pushed
    dest = tmp_path / "serve"
    result = registry.prepare("org/m:production", dest)
    written = tree(dest)
    pin_bytes = written.pop(PIN_NAME)
    assert written == _small(first), "exactly the small files, byte for byte"
    assert not list(dest.rglob("*.safetensors")), "no weights in plaintext"
    version = registry.resolve("org/m@1")
    pin = read_pin(dest)
    assert pin == result.pin
    assert (pin.name, pin.number, pin.digest) == ("org/m", 1, version.digest)
    assert pin.requested == "org/m:production" and pin.ref == "org/m@1"
    assert pin.pinned_ref == f"org/m@{version.digest}"
    weights = {f.path: f for f in version.files if f.path.endswith(".safetensors")}
    assert {s.path: (s.size, s.digest) for s in pin.streamed} == {
        p: (f.size, f.digest) for p, f in weights.items()
    }
    assert json.loads(pin_bytes)["complete"] is True
    assert sorted(result.written) == sorted(_small(first))
    assert result.unchanged == () and result.removed == ()
    audit = [e for e in registry.audit_events(subject="org/m") if e.action == "prepare"]
    assert len(audit) == 1 and audit[0].details["version"] == 1
    assert audit[0].details["requested"] == "org/m:production"


def test_prepare_again_changes_nothing_and_follows_a_moved_alias(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, _first, second = pushed
    dest = tmp_path / "serve"
    registry.prepare("org/m:production", dest)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    again = registry.prepare("org/m:production", dest)
    assert again.written == () and again.removed == ()
    assert sorted(again.unchanged) == sorted(_small(dest).keys() - {PIN_NAME})
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before
    # The alias moves: the same folder now holds version 2's files, and only those.
    registry.promote("org/m@2", "production")
    moved = registry.prepare("org/m:production", dest)
    assert read_pin(dest).number == 2
    assert "config.json" in moved.written and "special_tokens_map.json" in moved.written
    assert moved.removed == ("templates/chat [v2].jinja",)
    written = tree(dest)
    written.pop(PIN_NAME)
    assert written == _small(second)


def test_a_managed_file_edited_in_place_is_restored(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, first, _second = pushed
    dest = tmp_path / "serve"
    registry.prepare("org/m@1", dest)
    (dest / "config.json").write_bytes(b'{"model_type": "evil"}')
    result = registry.prepare("org/m@1", dest)
    assert result.written == ("config.json",)
    assert (dest / "config.json").read_bytes() == (first / "config.json").read_bytes()


def test_what_prepare_did_not_write_is_never_overwritten(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, _first, _second = pushed
    dest = tmp_path / "serve"
    dest.mkdir()
    (dest / "config.json").write_bytes(b"mine")
    (dest / "notes.txt").write_bytes(b"kept")
    with pytest.raises(DestinationExistsError, match=r"config\.json"):
        registry.prepare("org/m@1", dest)
    assert tree(dest) == {"config.json": b"mine", "notes.txt": b"kept"}
    # A registry.json that is not a pin is in the way too.
    (dest / "config.json").unlink()
    (dest / PIN_NAME).write_bytes(b'{"format": "something else"}')
    with pytest.raises(DestinationExistsError, match="not a pin"):
        registry.prepare("org/m@1", dest)
    assert tree(dest) == {PIN_NAME: b'{"format": "something else"}', "notes.txt": b"kept"}
    # Files that already hold the version's bytes are taken as they are.
    (dest / PIN_NAME).unlink()
    (dest / "config.json").write_bytes(SMALL["config.json"])
    result = registry.prepare("org/m@1", dest)
    assert "config.json" in result.unchanged
    assert (dest / "notes.txt").read_bytes() == b"kept"


def test_include_writes_the_weights_verified(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, first, _second = pushed
    dest = tmp_path / "serve"
    result = registry.prepare("org/m@1", dest, include=["*.safetensors"])
    assert _weights(dest) == _weights(first)
    assert result.pin.streamed == ()
    assert set(result.pin.files) == set(tree(first))
    for pattern in ("", "/etc/*"):
        with pytest.raises(InvalidInputError, match="--include"):
            registry.prepare("org/m@1", tmp_path / "other", include=[pattern])
    assert not (tmp_path / "other").exists()


def test_a_tampered_small_file_is_refused_and_leaves_nothing(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    registry, _first, _second = pushed
    version = registry.resolve("org/m@1")
    config = next(f for f in version.files if f.path == "config.json")
    blob = (
        registry.settings.home
        / "store"
        / "objects"
        / registry.store.object_name("blob", config.digest)
    )
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0x01
    blob.write_bytes(bytes(data))
    dest = tmp_path / "serve"
    with pytest.raises(IntegrityError):
        registry.prepare("org/m@1", dest)
    assert not dest.exists(), "a folder this prepare created goes again"


def test_an_interrupted_prepare_is_refused_by_engines_and_finished_by_the_next(
    pushed: tuple[Registry, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _first, second = pushed
    dest = tmp_path / "serve"
    registry.prepare("org/m@1", dest)
    import registry.prepared as prepared

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(prepared, "write_verified", fail)
        with pytest.raises(Exception, match="space"):
            registry.prepare("org/m@2", dest)
    stopped = Pin.from_json((dest / PIN_NAME).read_bytes(), where=dest / PIN_NAME)
    assert not stopped.complete and stopped.number == 2
    with pytest.raises(InvalidInputError, match="being prepared") as refused:
        read_pin(dest)
    assert "prepare` again" in str(refused.value.hint)
    registry.prepare("org/m@2", dest)
    written = tree(dest)
    written.pop(PIN_NAME)
    assert written == _small(second) and read_pin(dest).number == 2


def test_a_version_with_its_own_registry_json_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    registry.push("org/odd", _model(tmp_path, "odd", 3, **{PIN_NAME: b"{}"}))
    with pytest.raises(InvalidInputError, match=PIN_NAME):
        registry.prepare("org/odd", tmp_path / "serve")
    assert not (tmp_path / "serve").exists()
    with pytest.raises(NotFoundError):
        registry.prepare("org/none", tmp_path / "serve")


def test_read_pin_refuses_what_is_not_a_finished_pin(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a prepared folder") as refused:
        read_pin(tmp_path)
    assert "model-registry prepare" in str(refused.value.hint)
    for text in ('{"format": "x"}', "not json", '{"format": "model-registry/prepared/v1"}'):
        (tmp_path / PIN_NAME).write_text(text)
        with pytest.raises(IntegrityError, match="not a pin"):
            read_pin(tmp_path)
    bad_path = {
        "format": "model-registry/prepared/v1",
        "complete": True,
        "model": "org/m",
        "version": 1,
        "digest": "blake3:" + "0" * 64,
        "files": ["../../etc/passwd"],
        "streamed": [],
    }
    (tmp_path / PIN_NAME).write_text(json.dumps(bad_path))
    with pytest.raises(IntegrityError, match="not a pin"):
        read_pin(tmp_path)


def test_the_cli_prints_paths_verbatim_and_answers_json(
    pushed: tuple[Registry, Path, Path], tmp_path: Path
) -> None:
    _registry, _first, _second = pushed
    dest = tmp_path / "[bold]serve[/bold]"
    result = CliRunner().invoke(main, ["prepare", "org/m:production", str(dest)])
    assert result.exit_code == 0, result.output
    assert f"-> {dest}" in result.output and "org/m@1" in result.output
    result = CliRunner().invoke(main, ["prepare", "org/m@2", str(dest), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["ref"] == "org/m@2" and answer["requested"] == "org/m@2"
    assert answer["pin"] == str(dest / PIN_NAME)
    assert "special_tokens_map.json" in answer["written"]
    assert answer["removed"] == ["templates/chat [v2].jinja"]
    assert {f["path"] for f in answer["streamed"]} == set(_weights(_second))
    refused = CliRunner().invoke(main, ["prepare", "org/m@1", str(dest), "--include", "/x"])
    assert refused.exit_code == InvalidInputError.exit_code
    assert "Traceback" not in refused.output and "--include" in refused.output


def test_prepare_through_the_server_matches_the_local_one(
    pushed: tuple[Registry, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, first, _second = pushed
    _token_id, token = registry.create_token("serving", role=READER, models=["org/*"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with LiveServer(registry, tmp_path / "staging") as server:
        result = CliRunner(
            env={"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": token}
        ).invoke(main, ["prepare", "org/m:production", str(tmp_path / "remote"), "--json"])
        assert result.exit_code == 0, result.output
    registry.prepare("org/m:production", tmp_path / "local")
    assert tree(tmp_path / "remote") == tree(tmp_path / "local")
    written = tree(tmp_path / "remote")
    written.pop(PIN_NAME)
    assert written == _small(first)


def test_weights_in_other_formats_are_withheld_unless_included(
    registry: Registry, tmp_path: Path
) -> None:
    folder = _model(tmp_path, "pickled", 4, **{"pytorch_model.bin": b"PICKLE" * 100})
    registry.push("org/pickled", folder)
    dest = tmp_path / "serve"
    result = registry.prepare("org/pickled", dest)
    assert not (dest / "pytorch_model.bin").exists()
    assert result.pin.withheld == ("pytorch_model.bin",)
    assert read_pin(dest).withheld == ("pytorch_model.bin",)
    shown = CliRunner().invoke(main, ["prepare", "org/pickled", str(dest)])
    assert shown.exit_code == 0 and "withheld: pytorch_model.bin" in shown.output
    result = registry.prepare("org/pickled", dest, include=["*.bin"])
    assert (dest / "pytorch_model.bin").read_bytes() == b"PICKLE" * 100
    assert result.pin.withheld == () and "pytorch_model.bin" in result.pin.files
