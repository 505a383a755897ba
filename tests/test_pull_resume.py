"""Pulls into a folder that already holds files: idempotent (files with the manifest's bytes are
kept, others refused unless --force), resumable (an interrupted pull's verified files are
taken up by the next pull, hashed again first; staging folders of killed pulls, which hold
decrypted bytes, are removed once no process holds them), and --include/--exclude. Local pulls
and pulls through the REST API alike."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.client import RemoteRegistry
from registry.errors import ConflictError, DestinationExistsError, InvalidInputError
from registry.materialize import STAGING_PREFIX, STAGING_SUFFIX, UNLOCKED_STALE_SECONDS
from registry.service import ADMIN, Registry
from tests.conftest import tree
from tests.test_api_cli import LiveServer


@pytest.fixture(params=["local", "api"])
def puller(
    request: pytest.FixtureRequest,
    registry: Registry,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """A registry holding `llama@1` (model_dir), as the local facade or through the API."""
    registry.push("llama", model_dir)
    if request.param == "local":
        yield registry
        return
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    token = registry.create_token("ci", role=ADMIN, models=["*"])[1]
    with (
        LiveServer(registry, tmp_path / "staging") as server,
        RemoteRegistry(server.url, token) as remote,
    ):
        yield remote


class Recorder:
    """A progress that records what it was told, and interrupts (as Ctrl-C does) once
    `interrupt_after` bytes were downloaded."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.advanced: list[int] = []
        self.interrupt_after = interrupt_after

    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        self.advanced.append(amount)
        if self.interrupt_after is not None and sum(self.advanced) > self.interrupt_after:
            raise KeyboardInterrupt

    def end(self) -> None:
        pass


def staging_dirs(dest: Path) -> list[Path]:
    return sorted(dest.glob(f"{STAGING_PREFIX}*{STAGING_SUFFIX}"))


def test_a_second_pull_keeps_what_is_already_right(
    puller: Any, model_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    first = puller.pull("llama", dest)
    assert first.unchanged == () and len(first.files) == len(tree(model_dir))
    before = {p.name: p.stat().st_ino for p in dest.iterdir()}
    again = puller.pull("llama", dest)
    assert again.files == () and again.bytes == 0
    assert set(again.unchanged) == set(tree(model_dir))
    assert {p.name: p.stat().st_ino for p in dest.iterdir()} == before  # nothing rewritten
    assert tree(dest) == tree(model_dir) and staging_dirs(dest) == []


def test_only_missing_files_are_written_and_changed_ones_need_force(
    puller: Any, model_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    puller.pull("llama", dest)
    (dest / "tokenizer.json").unlink()
    partial = puller.pull("llama", dest)
    assert partial.files == ("tokenizer.json",)
    assert tree(dest) == tree(model_dir)

    (dest / "config.json").write_text('{"edited": true}')
    with pytest.raises(DestinationExistsError, match=r"other content: config\.json"):
        puller.pull("llama", dest)
    assert (dest / "config.json").read_text() == '{"edited": true}'
    forced = puller.pull("llama", dest, force=True)
    assert forced.files == ("config.json",)
    assert tree(dest) == tree(model_dir)


@pytest.mark.parametrize("staged", ["intact", "tampered"])
def test_an_interrupted_pull_is_resumed_from_what_it_had_verified(
    puller: Any, model_dir: Path, tmp_path: Path, staged: str
) -> None:
    dest = tmp_path / "out"
    files = puller.show("llama@1").manifest.files
    total = sum(entry.size for entry in files)
    first_two = files[0].size + files[1].size
    with pytest.raises(KeyboardInterrupt):
        puller.pull("llama", dest, progress=Recorder(interrupt_after=first_two))
    # Nothing half-done under a final name; the verified files wait, 0700, in the staging.
    assert not any(p.name in tree(model_dir) for p in dest.iterdir())
    [staging] = staging_dirs(dest)
    assert staging.stat().st_mode & 0o777 == 0o700
    kept = staging / "verified" / files[0].path
    assert kept.read_bytes() == (model_dir / files[0].path).read_bytes()
    if staged == "tampered":
        kept.write_bytes(b"x" * files[0].size)

    progress = Recorder()
    resumed = puller.pull("llama", dest, progress=progress)
    assert tree(dest) == tree(model_dir)
    assert staging_dirs(dest) == []
    assert set(resumed.files) == set(tree(model_dir))
    if staged == "intact":
        # The staged files were hashed again, not downloaded again.
        assert progress.advanced[0] == first_two
        assert sum(progress.advanced) == total


def test_staging_folders_of_killed_pulls_are_removed_unless_held(
    puller: Any, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()

    def staging(name: str, *, lock: bool) -> Path:
        path = dest / f"{STAGING_PREFIX}{name}{STAGING_SUFFIX}"
        (path / "verified").mkdir(parents=True, mode=0o700)
        (path / "verified" / "weights.bin").write_bytes(b"decrypted")
        if lock:
            (path / ".lock").touch()
        return path

    dead = staging("dead", lock=True)
    old = staging("old", lock=False)
    long_ago = time.time() - UNLOCKED_STALE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    recent = staging("recent", lock=False)
    live = staging("live", lock=True)
    held = os.open(live / ".lock", os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        puller.pull("llama", dest)
    finally:
        os.close(held)
    assert not dead.exists() and not old.exists()
    assert recent.exists() and live.exists()


def test_a_pull_of_the_same_version_into_the_same_folder_waits_its_turn(
    puller: Any, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    digest = puller.show("llama@1").version.digest.removeprefix("blake3:")[:32]
    running = dest / f"{STAGING_PREFIX}{digest}{STAGING_SUFFIX}"
    running.mkdir(parents=True, mode=0o700)
    held = os.open(running / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConflictError, match="another pull"):
            puller.pull("llama", dest)
    finally:
        os.close(held)
    assert [p.name for p in dest.iterdir()] == [running.name]


def test_include_and_exclude_choose_the_files(puller: Any, model_dir: Path, tmp_path: Path) -> None:
    only_json = puller.pull("llama", tmp_path / "a", include=["*.json"], exclude=["tokenizer*"])
    assert sorted(tree(tmp_path / "a")) == ["config.json", "model.safetensors.index.json"]
    assert sorted(only_json.files) == ["config.json", "model.safetensors.index.json"]
    no_weights = puller.pull("llama", tmp_path / "b", exclude=["*.safetensors"])
    assert not any(name.endswith(".safetensors") for name in tree(tmp_path / "b"))
    # The rest, later, into the same folder: what is there already stays.
    rest = puller.pull("llama", tmp_path / "b")
    assert set(rest.unchanged) == set(no_weights.files)
    assert tree(tmp_path / "b") == tree(model_dir)


@pytest.mark.parametrize(
    ("option", "pattern", "message"),
    [
        ("include", "/etc/*", "a pattern matches paths inside the version"),
        ("exclude", "", "a pattern matches paths inside the version"),
        ("include", "*.gguf", "leave no file"),
    ],
)
def test_bad_patterns_are_refused_before_anything_is_written(
    puller: Any, tmp_path: Path, option: str, pattern: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        puller.pull("llama", tmp_path / "out", **{option: [pattern]})
    assert not (tmp_path / "out").exists()


def test_the_cli_pull_is_idempotent_and_takes_patterns(
    registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    registry.push("llama", model_dir)
    dest = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(main, ["pull", "llama", str(dest), "--include", "*.json", "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["pull", "llama", str(dest)])
    assert again.exit_code == 0, again.output
    assert "already there" in again.output
    assert tree(dest) == tree(model_dir)
    up_to_date = runner.invoke(main, ["pull", "llama", str(dest)])
    assert up_to_date.exit_code == 0 and "up to date" in up_to_date.output
    bad = runner.invoke(main, ["pull", "llama", str(tmp_path / "x"), "--exclude", "*"])
    assert bad.exit_code == InvalidInputError.exit_code and "leave no file" in bad.output
    assert not (tmp_path / "x").exists()
