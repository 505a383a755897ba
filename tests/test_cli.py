"""The CLI as a user runs it: the installed `model-registry` command end to end, and every tamper
case on a stored blob (detected, non-zero exit naming the file, no plaintext in the destination)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from cli.main import main
from registry.crypto.keys import create_key_file
from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE, SealedHeader
from registry.errors import IntegrityError, InvalidInputError, KeyAccessError
from registry.service import Registry
from registry.testing.models import make_model, write_safetensors
from tests.conftest import tree

CLI = [sys.executable, "-m", "cli"]
TARGET = "model-00002-of-00002.safetensors"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_end_to_end_as_a_user(home: Path, tmp_path: Path) -> None:
    model = make_model(tmp_path / "model", shards=2, shard_size=2_500_000, seed=3)
    env = {**os.environ, "MODEL_REGISTRY_HOME": str(home)}

    init = run("init", env=env)
    assert init.returncode == 0, init.stderr
    assert "created registry" in init.stdout
    assert run("init", env=env).stdout.startswith("already initialised")

    pushed = run("push", "team/llama", str(model), "-m", "first", "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    record = json.loads(pushed.stdout)
    assert record["ref"] == "team/llama@1" and record["created"] is True
    assert record["digest"].startswith("blake3:") and record["uploaded_bytes"] > 4_900_000

    again = run("push", "team/llama", str(model), env=env)
    assert again.returncode == 0 and "unchanged" in again.stdout and "team/llama@1" in again.stdout

    listing = json.loads(run("ls", "--json", env=env).stdout)
    assert listing == [
        {
            "name": "team/llama",
            "versions": 1,
            "latest": 1,
            "size": record["size"],
            "stored_size": record["size"],
            "created_at": listing[0]["created_at"],
        }
    ]
    versions = json.loads(run("ls", "team/llama", "--json", env=env).stdout)
    assert [v["ref"] for v in versions] == ["team/llama@1"]
    shown = run("show", f"team/llama@blake3:{record['digest'][7:23]}", env=env)
    assert shown.returncode == 0
    assert (
        TARGET in shown.stdout and "tensors" in shown.stdout and "signed by  local" in shown.stdout
    )

    dest = tmp_path / "pulled"
    pulled = run("pull", "team/llama", str(dest), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert tree(dest) == tree(model)
    again = run("pull", "team/llama", str(dest), env=env)
    assert again.returncode == 0 and "5 files already there" in again.stdout, again.stderr
    (dest / "config.json").write_text("{}")
    refused = run("pull", "team/llama", str(dest), env=env)
    assert refused.returncode == 5 and "--force" in refused.stderr
    assert run("pull", "team/llama", str(dest), "--force", env=env).returncode == 0

    verified = run("verify", "team/llama@1", "--read-data", env=env)
    assert verified.returncode == 0 and "ok:" in verified.stdout

    missing = run("show", "team/llama@9", env=env)
    assert missing.returncode == 4 and "does not exist" in missing.stderr
    bad = run("show", "../etc", env=env)
    assert bad.returncode == 3 and "hint:" in bad.stderr
    no_home = run("ls", env={**env, "MODEL_REGISTRY_HOME": str(tmp_path / "none")})
    assert no_home.returncode == 8 and "model-registry init" in no_home.stderr


# -- tamper matrix -------------------------------------------------------------------------------


@pytest.fixture
def pushed(home: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A registry holding a model whose second shard spans several 1 MiB chunks."""
    model = make_model(tmp_path / "model", shards=2, shard_size=3_600_000, seed=5)
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("llama", model)
    return model, home


def blob_path(home: Path, relative: str) -> Path:
    with Registry.open(home) as registry:
        version = registry.resolve("llama")
        digest = next(f.digest for f in version.files if f.path == relative)
        path = home / "store" / "objects" / registry.store.object_name("blob", digest)
    os.chmod(path, 0o644)
    return path


def flip(offset_of: Callable[[SealedHeader], int]) -> Callable[[bytearray], bytearray]:
    def tamper(data: bytearray) -> bytearray:
        data[offset_of(SealedHeader.unpack(bytes(data)))] ^= 0x01
        return data

    return tamper


def chunk(data: bytearray, index: int) -> bytes:
    header = SealedHeader.unpack(bytes(data))
    offset, length = header.chunk_range(index, index)
    return bytes(data[offset : offset + length])


def swap(data: bytearray) -> bytearray:
    first, second = chunk(data, 0), chunk(data, 1)
    return bytearray(data[:HEADER_SIZE] + second + first + data[HEADER_SIZE + 2 * len(first) :])


def duplicate(data: bytearray) -> bytearray:
    first = chunk(data, 0)
    return bytearray(data[:HEADER_SIZE] + first + first + data[HEADER_SIZE + 2 * len(first) :])


def drop(data: bytearray) -> bytearray:
    first = chunk(data, 0)
    return bytearray(data[:HEADER_SIZE] + data[HEADER_SIZE + len(first) :])


def truncate(data: bytearray) -> bytearray:
    header = SealedHeader.unpack(bytes(data))
    return data[: header.chunk_offset(header.chunk_count - 1)]


TAMPERS: dict[str, Callable[[bytearray], bytearray]] = {
    "bit in chunk 0": flip(lambda h: h.chunk_offset(0) + 10),
    "bit in chunk 2": flip(lambda h: h.chunk_offset(2) + 1000),
    "bit in a tag": flip(lambda h: h.chunk_offset(1) + h.chunk_size + TAG_SIZE - 1),
    "bit in the last tag": flip(lambda h: h.sealed_size - 1),
    "bit in header salt": flip(lambda h: 20),
    "bit in header size": flip(lambda h: 19),
    "bit in header commitment": flip(lambda h: HEADER_SIZE - 1),
    "bit in nonce prefix": flip(lambda h: 53),
    "chunks swapped": swap,
    "chunk duplicated": duplicate,
    "chunk dropped": drop,
    "truncated at a chunk boundary": truncate,
}


def assert_refused(result: Result, dest: Path, model: Path, *, exit_code: int) -> None:
    assert result.exit_code == exit_code, result.output
    assert TARGET in result.output
    written = tree(dest) if dest.exists() else {}
    assert TARGET not in written
    # No plaintext of the damaged file anywhere under the destination, not even a piece.
    secret = (model / TARGET).read_bytes()
    pieces = [secret[i : i + 4096] for i in range(0, len(secret), 1 << 20)]
    for content in written.values():
        assert not any(piece in content for piece in pieces)


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampered_blob_is_detected_and_nothing_is_written(
    case: str, pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    model, home = pushed
    path = blob_path(home, TARGET)
    path.write_bytes(TAMPERS[case](bytearray(path.read_bytes())))
    dest = tmp_path / "dest"
    runner = CliRunner()
    result = runner.invoke(main, ["pull", "llama", str(dest)])
    assert_refused(result, dest, model, exit_code=IntegrityError.exit_code)
    verified = runner.invoke(main, ["verify", "llama", "--read-data"])
    assert verified.exit_code == IntegrityError.exit_code
    assert f"BAD {TARGET}" in verified.output


def test_chunk_spliced_from_another_blob_is_detected(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    model, home = pushed
    other = blob_path(home, "model-00001-of-00002.safetensors")
    target = blob_path(home, TARGET)
    victim = bytearray(target.read_bytes())
    donor = chunk(bytearray(other.read_bytes()), 1)
    header = SealedHeader.unpack(bytes(victim))
    offset = header.chunk_offset(1)
    victim[offset : offset + len(donor)] = donor
    target.write_bytes(victim)
    dest = tmp_path / "dest"
    result = CliRunner().invoke(main, ["pull", "llama", str(dest)])
    assert_refused(result, dest, model, exit_code=IntegrityError.exit_code)


@pytest.mark.parametrize("where", ["catalog", "store"])
def test_flipped_bit_in_wrapped_key_is_detected(
    where: str, pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    model, home = pushed
    with Registry.open(home) as registry:
        digest = next(f.digest for f in registry.resolve("llama").files if f.path == TARGET)
        if where == "catalog":
            with registry.catalog.engine.begin() as connection:
                wrapped = connection.execute(
                    text("SELECT wrapped FROM key_slots WHERE digest = :d"), {"d": digest}
                ).scalar_one()
                damaged = bytes([wrapped[0]]) + bytes([wrapped[1] ^ 1]) + wrapped[2:]
                connection.execute(
                    text("UPDATE key_slots SET wrapped = :w WHERE digest = :d"),
                    {"w": damaged, "d": digest},
                )
        else:
            # Without a catalog slot the store's slot is used: damage that one.
            with registry.catalog.engine.begin() as connection:
                connection.execute(text("DELETE FROM key_slots WHERE digest = :d"), {"d": digest})
            name = registry.store.slot_name("blob", digest, registry.keys.kek_id)
            slot_path = home / "store" / "objects" / name
            os.chmod(slot_path, 0o644)
            slot = json.loads(slot_path.read_bytes())
            slot["wrapped"] = ("B" if slot["wrapped"][0] != "B" else "C") + slot["wrapped"][1:]
            slot_path.write_text(json.dumps(slot))
    dest = tmp_path / "dest"
    result = CliRunner().invoke(main, ["pull", "llama", str(dest)])
    assert_refused(result, dest, model, exit_code=IntegrityError.exit_code)


def test_wrong_key_file_is_refused_naming_the_file(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    _model, home = pushed
    kek = home / "keys" / "kek.key"
    kek.unlink()
    create_key_file(kek)
    dest = tmp_path / "dest"
    result = CliRunner().invoke(main, ["pull", "llama", str(dest)])
    assert result.exit_code == KeyAccessError.exit_code
    assert "wrong key file" in result.output
    assert not dest.exists() or tree(dest) == {}


def test_missing_object_is_reported_with_its_file(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    model, home = pushed
    blob_path(home, TARGET).unlink()
    dest = tmp_path / "dest"
    result = CliRunner().invoke(main, ["pull", "llama", str(dest)])
    assert_refused(result, dest, model, exit_code=IntegrityError.exit_code)
    assert "missing" in result.output


# -- hostile input through the CLI ------------------------------------------------------------


def hostile_models(root: Path) -> dict[str, Path]:
    cases: dict[str, Path] = {}

    def shard(name: str, raw: bytes) -> None:
        directory = root / name
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(raw)
        cases[name] = directory

    body = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    shard("length-beyond-file", (10_000).to_bytes(8, "little") + body + bytes(8))
    shard("length-2-pow-63", (2**63).to_bytes(8, "little") + body + bytes(8))
    shard("invalid-json", len(b"{nope").to_bytes(8, "little") + b"{nope")
    shard("not-utf8", (4).to_bytes(8, "little") + b"\xff\xfe\xfd\xfc")
    unknown = b'{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}'
    shard("unknown-dtype", len(unknown).to_bytes(8, "little") + unknown + bytes(8))
    mismatch = b'{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}'
    shard("shape-mismatch", len(mismatch).to_bytes(8, "little") + mismatch + bytes(8))
    overlap = (
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    )
    shard("overlapping", len(overlap).to_bytes(8, "little") + overlap + bytes(12))
    out_of_range = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    shard("out-of-range", len(out_of_range).to_bytes(8, "little") + out_of_range + bytes(8))

    traversal = root / "index-traversal"
    traversal.mkdir()
    write_safetensors(traversal / "model.safetensors", {"w": ("F32", [2], bytes(8))})
    (traversal / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../model.safetensors"}})
    )
    cases["index-traversal"] = traversal
    return cases


def test_hostile_safetensors_are_refused_and_nothing_is_stored(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    before = tree(home / "store")
    runner = CliRunner()
    for case, path in hostile_models(tmp_path / "hostile").items():
        result = runner.invoke(main, ["push", "hostile", str(path)])
        assert result.exit_code == InvalidInputError.exit_code, (case, result.output)
        assert "error:" in result.output, case
        assert "model.safetensors" in result.output, case
    assert tree(home / "store") == before
    listing = runner.invoke(main, ["ls", "--json"])
    assert json.loads(listing.output) == []


def test_json_errors_have_a_stable_shape(home: Path) -> None:
    Registry.init(home)
    result = CliRunner().invoke(main, ["show", "nothing@1", "--json"])
    assert result.exit_code == 4
    payload = json.loads(result.output[: result.output.rindex("}") + 1])
    assert payload["error"]["code"] == "not_found"
    assert "nothing" in payload["error"]["message"]


def test_keys_commands(home: Path) -> None:
    Registry.init(home)
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["keys", "show", "--json"]).output)
    assert shown["signing_public_key"].startswith("ed25519:")
    assert [s["name"] for s in shown["trusted_signers"]] == ["local"]
    other = Registry.init(home.parent / "other")
    assert runner.invoke(main, ["keys", "trust", "ci", other.public_key]).exit_code == 0
    assert runner.invoke(main, ["keys", "trust", "ci", other.public_key]).exit_code == 3
    assert runner.invoke(main, ["keys", "trust", "x", "ed25519:garbage"]).exit_code == 3
    names = [
        s["name"]
        for s in json.loads(runner.invoke(main, ["keys", "show", "--json"]).output)[
            "trusted_signers"
        ]
    ]
    assert names == ["local", "ci"]
    assert runner.invoke(main, ["keys", "untrust", "ci"]).exit_code == 0
    assert runner.invoke(main, ["keys", "untrust", "ci"]).exit_code == 4


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("init", "push", "pull", "ls", "show", "verify", "keys"):
        assert command in result.output


def test_module_entry_point_matches_console_script() -> None:
    assert shutil.which("model-registry") or Path(sys.executable).with_name("model-registry")
    assert run("--version").stdout.startswith("model-registry")
