"""OpenSSF model signatures through the registry (issue 20, items 1 and 2), against the real
`model_signing` CLI: `pull --signature` writes a model.sig the stock verifier accepts for the
pulled folder (and refuses after any change), built from the manifest's SHA-256 digests; a push
checks a model.sig made by `model_signing sign` against its files and the trusted signers,
records the signer, and a signer policy then guards promotions; locally and through a server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.client import RemoteRegistry
from registry.config import CONFIG_FILE
from registry.errors import ConfigurationError, IntegrityError, InvalidInputError, PolicyError
from registry.service import ADMIN, Registry
from registry.testing.models import make_model
from tests.test_api_cli import LiveServer
from tests.test_openssf import key_files, model_signing, run

__all__ = ["model_signing"]


def _trust(home: Path, *public_keys: Path) -> None:
    """List public keys under [openssf] trusted_keys in the home's config.toml."""
    config = home / CONFIG_FILE
    listed = ", ".join(json.dumps(str(p)) for p in public_keys)
    config.write_text(config.read_text() + f"\n[openssf]\ntrusted_keys = [{listed}]\n")


def _verify(cli: list[str], folder: Path, public_key: Path) -> bool:
    done = run(
        cli,
        "verify",
        "key",
        folder,
        "--signature",
        folder / "model.sig",
        "--public_key",
        public_key,
    )
    return done.returncode == 0


def test_pull_signature_is_accepted_by_model_signing_and_nothing_else(
    home: Path, tmp_path: Path, model_signing: list[str]
) -> None:
    Registry.init(home)
    source = make_model(tmp_path / "model")
    runner = CliRunner()
    assert runner.invoke(main, ["push", "org/m", str(source), "-q"]).exit_code == 0
    public = tmp_path / "registry.pub"
    exported = runner.invoke(main, ["keys", "export", "--openssf", str(public), "--json"])
    assert exported.exit_code == 0, exported.output
    fingerprint = json.loads(exported.output)["fingerprint"]
    folder = tmp_path / "pulled"
    pulled = runner.invoke(main, ["pull", "org/m", str(folder), "--signature", "-q"])
    assert pulled.exit_code == 0, pulled.output
    assert _verify(model_signing, folder, public)
    with Registry.open(home) as registry:
        entry = registry.audit_events(limit=5)
        signed = [e for e in entry if e.action == "openssf-sign"]
        assert signed and signed[0].details["key"] == fingerprint
    # Every change to the folder is refused by the stock verifier.
    shard = next(folder.glob("*.safetensors"))
    original = shard.read_bytes()
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert not _verify(model_signing, folder, public)
    shard.write_bytes(original)
    (folder / "extra.txt").write_text("not signed")
    assert not _verify(model_signing, folder, public)
    (folder / "extra.txt").unlink()
    assert _verify(model_signing, folder, public)
    _other_private, other_public = key_files(tmp_path, "other")
    assert not _verify(model_signing, folder, other_public)
    # A partial pull cannot be signed whole.
    partial = runner.invoke(
        main, ["pull", "org/m", str(tmp_path / "part"), "--signature", "--include", "*.json"]
    )
    assert partial.exit_code == 3 and not (tmp_path / "part").exists()


def test_a_version_without_sha256_digests_is_not_signed(home: Path) -> None:
    from registry.testing.seed import seed_catalog

    Registry.init(home)
    seed_catalog(home, models=1, versions=1)  # version 2 manifests, as before issue 20
    with Registry.open(home) as registry:
        name = registry.models()[0].name
        with pytest.raises(InvalidInputError, match="before SHA-256 digests were recorded"):
            registry.openssf_signature(name)


def test_a_push_checks_a_model_signing_signature_and_records_its_signer(
    home: Path, tmp_path: Path, model_signing: list[str]
) -> None:
    Registry.init(home)
    private, public = key_files(tmp_path, "ci")
    source = make_model(tmp_path / "model")
    signed = run(
        model_signing,
        "sign",
        "key",
        source,
        "--private_key",
        private,
        "--signature",
        source / "model.sig",
    )
    assert signed.returncode == 0, signed.stderr
    with Registry.open(home) as registry:
        with pytest.raises(ConfigurationError, match="trusts no OpenSSF signer"):
            registry.push("org/signed", source)
        assert registry.models() == []
    _trust(home, public)
    with Registry.open(home) as registry:
        result = registry.push("org/signed", source)
        details = registry.show(result.version.ref)
        paths = {f.path for f in details.manifest.files}
        assert "model.sig" not in paths  # the push's signature, not a file of the model
        provenance = details.manifest.provenance
        assert provenance is not None and provenance.openssf is not None
        identity = provenance.openssf.identity
        assert provenance.openssf.kind == "key"
        push_entry = next(e for e in registry.audit_events(limit=10) if e.action == "push")
        assert push_entry.details["openssf"] == f"key:{identity}"
        # The signer policy now holds promotions to this version, and only to it.
        registry.set_signer_policy("org/signed", [identity], alias="production")
        registry.promote(result.version.ref, "production")
        (source / "notes.txt").write_text("added after signing")
        with pytest.raises(IntegrityError, match="pushed but not signed"):
            registry.push("org/signed", source)
        (source / "notes.txt").unlink()
        shard = next(source.glob("*.safetensors"))
        data = shard.read_bytes()
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        with pytest.raises(IntegrityError, match="signed sha256"):
            registry.push("org/signed", source)
        shard.write_bytes(data)
        (source / "model.sig").unlink()
        # The same files unsigned: another version (the manifest says nothing of a signer),
        # which the policy keeps out of production.
        plain = registry.push("org/signed", source).version
        assert plain.number == 2 and plain.digest != result.version.digest
        with pytest.raises(PolicyError):
            registry.promote(plain.ref, "production")
        assert [m.name for m in registry.models()] == ["org/signed"]
        assert len(registry.versions("org/signed")) == 2
    # A signature by a key nobody trusts is refused, and nothing is stored.
    rogue_private, _rogue_public = key_files(tmp_path, "rogue")
    other = make_model(tmp_path / "other", seed=3)
    run(
        model_signing,
        "sign",
        "key",
        other,
        "--private_key",
        rogue_private,
        "--signature",
        other / "model.sig",
    )
    with Registry.open(home) as registry:
        with pytest.raises(IntegrityError):
            registry.push("org/rogue", other)
        assert "org/rogue" not in [m.name for m in registry.models()]


def test_signatures_through_the_server(
    home: Path, tmp_path: Path, model_signing: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry.init(home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    private, public = key_files(tmp_path, "ci")
    _trust(home, public)
    source = make_model(tmp_path / "model")
    signed = run(
        model_signing,
        "sign",
        "key",
        source,
        "--private_key",
        private,
        "--signature",
        source / "model.sig",
    )
    assert signed.returncode == 0, signed.stderr
    with Registry.open(home) as registry:
        token = registry.create_token("ci", role=ADMIN, models=["org/*"])[1]
        with LiveServer(registry, tmp_path / "staging") as server:
            with RemoteRegistry(server.url, token) as remote:
                pushed = remote.push("org/remote", source)
                key = remote.openssf_public_key()
            details = registry.show(pushed.version.ref)
            assert details.manifest.provenance is not None
            assert details.manifest.provenance.openssf is not None
            exported = tmp_path / "server.pub"
            exported.write_bytes(key.pem)
            folder = tmp_path / "pulled"
            env = {"MODEL_REGISTRY_URL": server.url, "MODEL_REGISTRY_TOKEN": token}
            pulled = CliRunner().invoke(
                main, ["pull", "org/remote", str(folder), "--signature", "-q"], env=env
            )
            assert pulled.exit_code == 0, pulled.output
            assert _verify(model_signing, folder, exported)
            refused = CliRunner().invoke(
                main, ["pull", "other/x", str(tmp_path / "x"), "--signature"], env=env
            )
            assert refused.exit_code == 10  # outside the token's patterns
    assert os.path.exists(folder / "model.sig")
