"""OpenSSF model signatures (registry.crypto.openssf) against the real `model_signing` CLI: ours
pass its `verify` and fail it after tampering; its `sign key` and `sign certificate` output
verifies here and its files match the pushed digests; keys, CAs, expiry, payload and signature
edits, malformed bundles, a KMS key through moto, and Sigstore's offline path.

The digests are computed here with hashlib and blake3, standing in for what the registry records
at push time. Tests that need model_signing (or sigstore) skip when it is not installed, and fail
under CI=true (install the provenance extra).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import blake3
import boto3
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from moto import mock_aws

from registry.crypto.openssf import (
    KmsSigner,
    LocalKeySigner,
    OpenSSFTrust,
    Resource,
    check_resources,
    generate_key,
    key_hint,
    load_public_key,
    pae,
    public_key_fingerprint,
    sign_model,
    verify_model_signature,
)
from registry.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    KeyAccessError,
)

NOW = datetime.datetime.now(datetime.UTC)
FILES = {
    "config.json": b'{"hidden_size": 8}\n',
    "model.safetensors": os.urandom(300_000),
    "tokenizer/tokenizer.json": b"{}",
    "a/b": b"ab",
    "a-b/c": b"a-b-c",
    "a.txt": b"",  # an empty file is a signed file too
    "B.txt": b"upper",
}


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_signing() -> list[str]:
    """The model_signing CLI as a command prefix (with this interpreter: the same venv)."""
    try:
        import model_signing  # noqa: F401
        import OpenSSL  # noqa: F401  model_signing 1.1.1 imports it without declaring it
        import sigstore  # noqa: F401
    except ImportError as error:
        message = f"model_signing is not importable: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (under CI=true these tests must run: install [provenance])")
        pytest.skip(message)
    return [sys.executable, "-m", "model_signing"]


def run(cli: list[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def write_model(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def recorded(root: Path, *, skip: tuple[str, ...] = ("model.sig",)) -> dict[str, dict[str, str]]:
    """{path: {"sha256": hex, "blake3": hex}}: what the registry records for each pushed file."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name not in skip:
            data = path.read_bytes()
            out[name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "blake3": blake3.blake3(data).hexdigest(),
            }
    return out


def resources(digests: dict[str, dict[str, str]], algorithm: str = "sha256") -> list[Resource]:
    return [Resource(path, algorithm, d[algorithm]) for path, d in digests.items()]


def key_files(tmp: Path, name: str, curve: str = "P-256") -> tuple[Path, Path]:
    private = tmp / f"{name}.key.pem"
    signer = generate_key(private, curve=curve)  # type: ignore[arg-type]
    public = tmp / f"{name}.pub.pem"
    public.write_bytes(signer.public_key_pem())
    return private, public


def trust_keys(*paths: Path) -> OpenSSFTrust:
    return OpenSSFTrust.from_files(keys=paths)


def edit_bundle(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    bundle = json.loads(data)
    edit(bundle)
    return json.dumps(bundle).encode()


def resign(data: bytes, key_path: Path, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Edit the signed statement and sign it again with the key: a well-signed bad statement."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    bundle = json.loads(data)
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    edit(statement)
    payload = json.dumps(statement).encode()
    envelope["payload"] = base64.b64encode(payload).decode()
    signature = key.sign(pae(payload), ec.ECDSA(hashes.SHA256()))
    envelope["signatures"] = [{"sig": base64.b64encode(signature).decode()}]
    return json.dumps(bundle).encode()


# -- a test PKI ---------------------------------------------------------------------------------


def certificate(
    key: ec.EllipticCurvePrivateKey,
    cn: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None,
    *,
    ca: bool = False,
    usage: str = "code-signing",
    not_before: datetime.datetime = NOW - datetime.timedelta(minutes=5),
    days: float = 30,
    san: bool = True,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_key, issuer_name = issuer or (key, name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    if ca:
        flags.update(key_cert_sign=True, crl_sign=True)
    else:
        flags.update(digital_signature=True, key_encipherment=usage == "tls")
        purpose = ExtendedKeyUsageOID.CODE_SIGNING if usage != "tls" else None
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([purpose or ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        if san:
            names: list[x509.GeneralName] = [
                x509.RFC822Name("release-ci@example.com"),
                x509.UniformResourceIdentifier("https://ci.example.com/model-release"),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """Root (P-384) -> intermediate (P-256) -> code-signing leaf (P-256), written as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = certificate(self.root_key, "Test Root CA", ca=True, days=3650)
        self.int_key = ec.generate_private_key(ec.SECP256R1())
        root_issuer = (self.root_key, self.root.subject)
        self.intermediate = certificate(self.int_key, "Test Signing CA", root_issuer, ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = self.issue("model-release-ci")
        other_key = ec.generate_private_key(ec.SECP256R1())
        self.other_root = certificate(other_key, "Other Root CA", ca=True, days=3650)
        self.write("root", self.root)
        self.write("other-root", self.other_root)
        self.write("int", self.intermediate)
        self.write("leaf", self.leaf)
        (folder / "leaf.key.pem").write_bytes(
            self.leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def issue(self, cn: str, **options: Any) -> x509.Certificate:
        issuer = (self.int_key, self.intermediate.subject)
        return certificate(self.leaf_key, cn, issuer, **options)

    def write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.folder / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def signer(self) -> LocalKeySigner:
        return LocalKeySigner.from_file(self.folder / "leaf.key.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# -- our signatures through the real model_signing CLI ------------------------------------------


@pytest.mark.parametrize("curve", ["P-256", "P-384"])
def test_model_signing_cli_accepts_our_signature(
    model_signing: list[str], tmp_path: Path, curve: str
) -> None:
    model = write_model(tmp_path / "my-model")
    private, public = key_files(tmp_path, "k", curve)
    signer = LocalKeySigner.from_file(private)
    data = sign_model(resources(recorded(model)), model_name="my-model", signer=signer)
    assert data.count(b"\n") == 0 and b" " not in data  # one line of compact JSON
    (model / "model.sig").write_bytes(data)
    result = run(model_signing, "verify", "key", model, "--signature", model / "model.sig",
                 "--public_key", public)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verification succeeded" in result.stdout
    verified = verify_model_signature(data, trust=trust_keys(public))
    assert verified.kind == "key" and verified.issuer is None
    assert verified.identity == public_key_fingerprint(public.read_bytes())
    assert check_resources(verified, recorded(model)) == ()


def _change_byte(model: Path) -> None:
    data = bytearray((model / "model.safetensors").read_bytes())
    data[123_456] ^= 1
    (model / "model.safetensors").write_bytes(bytes(data))


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "changed byte": (_change_byte, "Hash mismatch"),
    "added file": (lambda m: (m / "tokenizer/extra.json").write_bytes(b"{}"), "Extra files"),
    "removed file": (lambda m: (m / "a.txt").unlink(), "Missing files"),
    "renamed file": (lambda m: (m / "a/b").rename(m / "a/c"), "Missing files"),
}


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model signed by us (P-256), its key files."""
    folder = tmp_path_factory.mktemp("signed")
    model = write_model(folder / "model")
    private, public = key_files(folder, "k")
    signer = LocalKeySigner.from_file(private)
    data = sign_model(resources(recorded(model)), model_name="model", signer=signer)
    (model / "model.sig").write_bytes(data)
    return model, private, public


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_model_signing_cli_refuses_tampering_with_our_signature(
    model_signing: list[str], signed_model: tuple[Path, Path, Path], tmp_path: Path, case: str
) -> None:
    original, _, public = signed_model
    model = shutil.copytree(original, tmp_path / "model")
    tamper, message = TAMPERING[case]
    tamper(model)
    result = run(model_signing, "verify", "key", model, "--signature", model / "model.sig",
                 "--public_key", public)  # fmt: skip
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_a_blake3_signature_verifies_with_model_signings_api(
    model_signing: list[str], signed_model: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The stock CLI re-hashes with SHA-256 only; the API honours the signed hash_type."""
    from model_signing import verifying

    original, private, public = signed_model
    model = shutil.copytree(original, tmp_path / "model")
    signer = LocalKeySigner.from_file(private)
    data = sign_model(resources(recorded(model), "blake3"), model_name="m", signer=signer)
    (model / "model.sig").write_bytes(data)
    config = verifying.Config().use_elliptic_key_verifier(public_key=public)
    config.verify(model, model / "model.sig")
    verified = verify_model_signature(data, trust=trust_keys(public))
    assert verified.hash_type == "blake3"
    assert check_resources(verified, recorded(model)) == ()
    _change_byte(model)
    with pytest.raises(ValueError, match="Hash mismatch"):
        config.verify(model, model / "model.sig")
    with pytest.raises(IntegrityError, match=r"model\.safetensors: signed blake3"):
        check_resources(verified, recorded(model))


def test_our_certificate_signature_passes_model_signing_cli(
    model_signing: list[str], pki: Pki, tmp_path: Path
) -> None:
    model = write_model(tmp_path / "model")
    data = sign_model(
        resources(recorded(model)),
        model_name="model",
        signer=pki.signer(),
        certificate_chain=[pki.leaf, pki.intermediate],
    )
    (model / "model.sig").write_bytes(data)
    result = run(model_signing, "verify", "certificate", model, "--signature",
                 model / "model.sig", "--certificate_chain", pki.folder / "root.pem")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    verified = verify_model_signature(data, trust=OpenSSFTrust(ca_roots=(pki.root,)))
    assert (verified.kind, verified.identity) == ("certificate", "release-ci@example.com")
    assert verified.issuer == "CN=Test Root CA"


def test_resources_are_in_model_signings_order(signed_model: tuple[Path, Path, Path]) -> None:
    model, _, public = signed_model
    data = (model / "model.sig").read_bytes()
    payload = json.loads(base64.b64decode(json.loads(data)["dsseEnvelope"]["payload"]))
    names = [r["name"] for r in payload["predicate"]["resources"]]
    assert names == sorted(names, key=PurePosixPath)
    assert names.index("a/b") < names.index("a-b/c") < names.index("a.txt")  # not string order
    assert payload["predicate"]["serialization"]["ignore_paths"] == ["model.sig"]
    hint = json.loads(data)["verificationMaterial"]["publicKey"]["hint"]
    assert hint == key_hint(load_public_key(public.read_bytes()))


# -- signatures by model_signing, verified here --------------------------------------------------


@pytest.fixture(scope="module")
def cli_signed(
    model_signing: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, bytes, Path]:
    folder = tmp_path_factory.mktemp("cli")
    model = write_model(folder / "model", {**FILES, "notes/skip-me.txt": b"unsigned"})
    private, public = key_files(folder, "cli", "P-384")
    result = run(model_signing, "sign", "key", model, "--private_key", private,
                 "--signature", model / "model.sig", "--ignore-paths", model / "notes")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return model, (model / "model.sig").read_bytes(), public


def test_a_model_signing_key_signature_verifies_and_matches(
    cli_signed: tuple[Path, bytes, Path],
) -> None:
    model, data, public = cli_signed
    verified = verify_model_signature(data, trust=trust_keys(public))
    assert verified.kind == "key" and verified.model_name == "model"
    assert verified.identity == public_key_fingerprint(public.read_bytes())
    assert verified.hash_type == "sha256"
    assert {".git", ".gitattributes", "model.sig", "notes"} <= set(verified.ignore_paths)
    assert verified.bundle_digest == "blake3:" + blake3.blake3(data).hexdigest()
    pushed = recorded(model, skip=())  # model.sig pushed beside the files: not a signed file
    assert "model.sig" in pushed
    assert check_resources(verified, pushed) == ("notes/skip-me.txt",)
    as_resources = {path: Resource(path, "sha256", d["sha256"]) for path, d in pushed.items()}
    assert check_resources(verified, as_resources) == ("notes/skip-me.txt",)


def test_a_model_signing_signature_refuses_other_files(
    cli_signed: tuple[Path, bytes, Path],
) -> None:
    model, data, public = cli_signed
    verified = verify_model_signature(data, trust=trust_keys(public))
    pushed = recorded(model)
    changed = {**pushed, "config.json": {"sha256": "0" * 64, "blake3": "1" * 64}}
    with pytest.raises(IntegrityError, match=r"config\.json: signed sha256") as caught:
        check_resources(verified, changed)
    assert caught.value.path == "config.json"
    added = {**pushed, "extra.bin": pushed["a/b"]}
    with pytest.raises(IntegrityError, match=r"extra\.bin: pushed but not signed"):
        check_resources(verified, added)
    removed = {k: v for k, v in pushed.items() if k != "a/b"}
    with pytest.raises(IntegrityError, match="a/b: signed but not pushed"):
        check_resources(verified, removed)
    renamed = {**removed, "a/c": pushed["a/b"]}
    with pytest.raises(IntegrityError, match=r"a/c: pushed but not signed.*a/b: signed but not"):
        check_resources(verified, renamed)
    blake3_only = {k: {"blake3": v["blake3"]} for k, v in pushed.items()}
    with pytest.raises(IntegrityError, match="signed with sha256, none recorded"):
        check_resources(verified, blake3_only)


def test_a_model_signing_signature_refuses_other_keys_and_edits(
    cli_signed: tuple[Path, bytes, Path], tmp_path: Path
) -> None:
    _, data, public = cli_signed
    _, other = key_files(tmp_path, "other", "P-384")
    with pytest.raises(IntegrityError, match="not among the trusted OpenSSF keys"):
        verify_model_signature(data, trust=trust_keys(other))
    with pytest.raises(IntegrityError, match="not among the trusted OpenSSF keys"):
        verify_model_signature(data, trust=OpenSSFTrust())
    # Without the hint every trusted key is tried: still only the signer's verifies.
    no_hint = edit_bundle(data, lambda b: b["verificationMaterial"]["publicKey"].pop("hint"))
    assert verify_model_signature(no_hint, trust=trust_keys(other, public)).kind == "key"
    with pytest.raises(IntegrityError, match="does not verify under the trusted key"):
        verify_model_signature(no_hint, trust=trust_keys(other))

    def edit_payload(bundle: dict[str, Any]) -> None:
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["resources"][0]["digest"] = "0" * 64
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    with pytest.raises(IntegrityError, match="does not verify"):
        verify_model_signature(edit_bundle(data, edit_payload), trust=trust_keys(public))

    def edit_signature(bundle: dict[str, Any]) -> None:
        entry = bundle["dsseEnvelope"]["signatures"][0]
        raw = bytearray(base64.b64decode(entry["sig"]))
        raw[-1] ^= 1
        entry["sig"] = base64.b64encode(bytes(raw)).decode()

    with pytest.raises(IntegrityError, match="does not verify"):
        verify_model_signature(edit_bundle(data, edit_signature), trust=trust_keys(public))


def test_a_model_signing_certificate_signature_verifies(
    model_signing: list[str], pki: Pki, tmp_path: Path
) -> None:
    model = write_model(tmp_path / "model", {"w.bin": b"weights", "cfg/c.json": b"{}"})
    result = run(model_signing, "sign", "certificate", model,
                 "--private_key", pki.folder / "leaf.key.pem",
                 "--signing_certificate", pki.folder / "leaf.pem",
                 "--certificate_chain", pki.folder / "int.pem",
                 "--signature", model / "model.sig")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = (model / "model.sig").read_bytes()
    verified = verify_model_signature(data, trust=OpenSSFTrust(ca_roots=(pki.root,)))
    assert verified.kind == "certificate"
    assert verified.identity == "release-ci@example.com"
    assert check_resources(verified, recorded(model)) == ()
    with pytest.raises(IntegrityError, match="does not lead to a trusted CA"):
        verify_model_signature(data, trust=OpenSSFTrust(ca_roots=(pki.other_root,)))
    with pytest.raises(IntegrityError, match="the trust lists no CA root"):
        verify_model_signature(data, trust=OpenSSFTrust(keys=(pki.leaf_key.public_key(),)))

    def drop_intermediate(bundle: dict[str, Any]) -> None:
        chain = bundle["verificationMaterial"]["x509CertificateChain"]
        chain["certificates"] = chain["certificates"][:1]

    leaf_only = edit_bundle(data, drop_intermediate)
    with pytest.raises(IntegrityError, match="does not lead to a trusted CA"):
        verify_model_signature(leaf_only, trust=OpenSSFTrust(ca_roots=(pki.root,)))
    # The intermediate alone, trusted as an anchor: the chain leads to it.
    trusted_int = OpenSSFTrust(ca_roots=(pki.intermediate,))
    assert verify_model_signature(leaf_only, trust=trusted_int).issuer == "CN=Test Signing CA"
    changed = {**recorded(model), "w.bin": {"sha256": "ab" * 32}}
    with pytest.raises(IntegrityError, match=r"w\.bin: signed sha256"):
        check_resources(verified, changed)


def _cert_signature(pki: Pki, leaf: x509.Certificate) -> bytes:
    files = [Resource("w.bin", "sha256", hashlib.sha256(b"w").hexdigest())]
    chain = [leaf, pki.intermediate]
    return sign_model(files, model_name="m", signer=pki.signer(), certificate_chain=chain)


def test_certificates_are_checked_now_and_for_signing(pki: Pki) -> None:
    trust = OpenSSFTrust(ca_roots=(pki.root,))
    expired = pki.issue("expired", not_before=NOW - datetime.timedelta(days=2), days=1)
    with pytest.raises(IntegrityError, match=r"leaf certificate is valid from .* not now"):
        verify_model_signature(_cert_signature(pki, expired), trust=trust)
    future = pki.issue("future", not_before=NOW + datetime.timedelta(days=1))
    with pytest.raises(IntegrityError, match="not now"):
        verify_model_signature(_cert_signature(pki, future), trust=trust)
    tls = pki.issue("tls-server", usage="tls")
    with pytest.raises(IntegrityError, match="does not include code signing"):
        verify_model_signature(_cert_signature(pki, tls), trust=trust)
    no_san = pki.issue("model-release-ci", san=False)
    verified = verify_model_signature(_cert_signature(pki, no_san), trust=trust)
    assert verified.identity == "model-release-ci"  # the CN when there is no e-mail or URI SAN
    other_key = ec.generate_private_key(ec.SECP256R1())
    stranger = certificate(other_key, "stranger", (pki.int_key, pki.intermediate.subject))
    with pytest.raises(InvalidInputError, match="not for the signing key"):
        _cert_signature(pki, stranger)


# -- strict parsing ------------------------------------------------------------------------------


@pytest.fixture
def ours(tmp_path: Path) -> tuple[bytes, Path, OpenSSFTrust]:
    private, public = key_files(tmp_path, "k")
    model = write_model(tmp_path / "m", {"w.bin": b"w", "x/y.json": b"{}"})
    signer = LocalKeySigner.from_file(private)
    data = sign_model(resources(recorded(model)), model_name="m", signer=signer)
    return data, private, trust_keys(public)


BUNDLE_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown field": (lambda b: b.update(extra=1), "unknown field extra"),
    "media type": (lambda b: b.update(mediaType=b["mediaType"] + ";x"), "mediaType"),
    "payload type": (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "payloadType"),
    "base64url": (
        lambda b: b["dsseEnvelope"].update(
            payload=b["dsseEnvelope"]["payload"].replace("+", "-").replace("/", "_") + "-_"
        ),
        "not standard base64",
    ),
    "two signatures": (
        lambda b: b["dsseEnvelope"]["signatures"].append(b["dsseEnvelope"]["signatures"][0]),
        "exactly one signature",
    ),
    "no material": (lambda b: b["verificationMaterial"].pop("publicKey"), "exactly one of"),
    "two materials": (
        lambda b: b["verificationMaterial"].update(x509CertificateChain={"certificates": []}),
        "exactly one of",
    ),
    "no envelope": (lambda b: b.pop("dsseEnvelope"), "lacks dsseEnvelope"),
    "timestamps": (
        lambda b: b["verificationMaterial"].update(timestampVerificationData={}),
        "timestamps nothing here checks",
    ),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_EDITS))
def test_malformed_bundles_are_refused(ours: tuple[bytes, Path, OpenSSFTrust], case: str) -> None:
    data, _, trust = ours
    edit, message = BUNDLE_EDITS[case]
    with pytest.raises(IntegrityError, match=message):
        verify_model_signature(edit_bundle(data, edit), trust=trust)


def test_garbage_is_refused(ours: tuple[bytes, Path, OpenSSFTrust]) -> None:
    _, _, trust = ours
    for garbage, message in [(b"\xff", "not JSON"), (b"[]", "not a JSON object"), (b"", "JSON")]:
        with pytest.raises(IntegrityError, match=message):
            verify_model_signature(garbage, trust=trust)


def _subject(statement: dict[str, Any]) -> None:
    statement["subject"][0]["digest"]["sha256"] = "0" * 64


STATEMENT_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "statement type": (lambda s: s.update(_type="x"), "statement type"),
    "predicate type": (
        lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"),
        "predicate type",
    ),
    "shards": (lambda s: s["predicate"]["serialization"].update(method="shards"), "only 'files'"),
    "blake2b": (lambda s: s["predicate"]["serialization"].update(hash_type="blake2b"), "blake2b"),
    "no allow_symlinks": (
        lambda s: s["predicate"]["serialization"].pop("allow_symlinks"),
        "lacks allow_symlinks",
    ),
    "inconsistent subject": (_subject, "manifest inconsistent"),
    "two subjects": (lambda s: s["subject"].append(s["subject"][0]), "exactly one subject"),
    "escaping name": (
        lambda s: s["predicate"]["resources"][0].update(name="../w.bin"),
        "'..' segment",
    ),
    "other algorithm": (
        lambda s: s["predicate"]["resources"][0].update(algorithm="blake3"),
        "is not hash_type",
    ),
    "upper-case digest": (
        lambda s: s["predicate"]["resources"][0].update(digest="AB" * 32),
        "lower-case hex",
    ),
    "duplicate": (
        lambda s: s["predicate"]["resources"].append(s["predicate"]["resources"][0]),
        "manifest inconsistent",  # the subject covers the list as signed
    ),
    "no resources": (lambda s: s["predicate"].update(resources=[]), "no resources"),
}


@pytest.mark.parametrize("case", sorted(STATEMENT_EDITS))
def test_well_signed_bad_statements_are_refused(
    ours: tuple[bytes, Path, OpenSSFTrust], case: str
) -> None:
    data, private, trust = ours
    edit, message = STATEMENT_EDITS[case]
    with pytest.raises(IntegrityError, match=message):
        verify_model_signature(resign(data, private, edit), trust=trust)


def test_a_duplicate_resource_with_a_consistent_subject_is_refused(
    ours: tuple[bytes, Path, OpenSSFTrust],
) -> None:
    data, private, trust = ours

    def duplicate(statement: dict[str, Any]) -> None:
        items = statement["predicate"]["resources"]
        items.append(items[0])
        raw = b"".join(bytes.fromhex(r["digest"]) for r in items)
        statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(raw).hexdigest()

    with pytest.raises(IntegrityError, match="listed twice"):
        verify_model_signature(resign(data, private, duplicate), trust=trust)


# -- signing inputs and keys ---------------------------------------------------------------------


def test_sign_model_refuses_bad_inputs(tmp_path: Path) -> None:
    signer = generate_key(tmp_path / "k.pem")
    digest = "ab" * 32
    cases: list[tuple[list[Resource], dict[str, Any], str]] = [
        ([], {}, "no files"),
        ([Resource("a", "sha256", digest), Resource("b", "blake3", digest)], {}, "one hash type"),
        ([Resource("a", "sha256", digest)] * 2, {}, "listed twice"),
        ([Resource(".gitattributes", "sha256", digest)], {}, "skips root"),
        ([Resource(".git/config", "sha256", digest)], {}, "skips root"),
        ([Resource("logs/x", "sha256", digest)], {"ignore_paths": ["logs"]}, "under ignored"),
        ([Resource("a", "sha256", digest)], {"ignore_paths": ["/abs"]}, "relative"),
    ]
    for items, options, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            sign_model(items, model_name="m", signer=signer, **options)
    for path, algorithm, value, message in [
        ("../x", "sha256", digest, "'..' segment"),
        ("a", "sha1", digest, "not one of"),
        ("a", "sha256", digest.upper(), "lower-case"),
        ("a", "sha256", digest[:-2], "64 lower-case"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            Resource(path, algorithm, value)


def test_generate_key_writes_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "openssf.pem"
    signer = generate_key(path, curve="P-521")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.curve == "P-521"
    assert LocalKeySigner.from_file(path).public_key_pem() == signer.public_key_pem()
    with pytest.raises(ConflictError, match="already exists"):
        generate_key(path)
    with pytest.raises(InvalidInputError, match="unknown curve"):
        generate_key(tmp_path / "x.pem", curve="P-192")  # type: ignore[arg-type]


def test_only_keys_model_signing_accepts_are_loaded(tmp_path: Path) -> None:
    others: dict[str, Any] = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "secp256k1": ec.generate_private_key(ec.SECP256K1()),
    }
    for name, key in others.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        with pytest.raises(InvalidInputError, match="P-256, P-384 or P-521"):
            LocalKeySigner.from_file(path)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        with pytest.raises(InvalidInputError, match="P-256, P-384 or P-521"):
            load_public_key(public)
    with pytest.raises(KeyAccessError, match="does not exist"):
        LocalKeySigner.from_file(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(InvalidInputError, match="not a usable PEM private key"):
        LocalKeySigner.from_file(tmp_path / "junk.pem")
    with pytest.raises(InvalidInputError, match="cannot read"):
        OpenSSFTrust.from_files(keys=[tmp_path / "missing.pem"])


def test_the_fingerprint_is_over_the_der_and_the_hint_over_the_pem(tmp_path: Path) -> None:
    _, public = key_files(tmp_path, "k")
    key = load_public_key(public.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_key_fingerprint(public.read_bytes()) == hashlib.sha256(der).hexdigest()
    assert key_hint(key) == hashlib.sha256(public.read_bytes()).hexdigest()


# -- AWS KMS -------------------------------------------------------------------------------------


class DigestKms:
    """A KMS client that does what AWS KMS documents for MessageType=DIGEST (sign the digest as
    given): moto hashes the digest again instead (see the moto test below)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.calls: list[dict[str, Any]] = []

    def get_public_key(self, **kwargs: Any) -> dict[str, Any]:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"KeyId": kwargs["KeyId"], "KeyUsage": "SIGN_VERIFY", "PublicKey": der}

    def sign(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        assert kwargs["MessageType"] == "DIGEST"
        prehashed = Prehashed({"ECDSA_SHA_384": hashes.SHA384()}[kwargs["SigningAlgorithm"]])
        return {"Signature": self.key.sign(kwargs["Message"], ec.ECDSA(prehashed))}


def test_a_kms_signature_passes_model_signing_cli(model_signing: list[str], tmp_path: Path) -> None:
    kms = DigestKms(ec.generate_private_key(ec.SECP384R1()))
    signer = KmsSigner("arn:aws:kms:us-east-1:111122223333:key/test", client=kms)
    assert signer.curve == "P-384"
    model = write_model(tmp_path / "model", {"w.bin": os.urandom(5000), "c.json": b"{}"})
    data = sign_model(resources(recorded(model)), model_name="model", signer=signer)
    [call] = kms.calls
    assert call["SigningAlgorithm"] == "ECDSA_SHA_384" and len(call["Message"]) == 48
    (model / "model.sig").write_bytes(data)
    public = tmp_path / "kms.pub.pem"
    public.write_bytes(signer.public_key_pem())
    result = run(model_signing, "verify", "key", model, "--signature", model / "model.sig",
                 "--public_key", public)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert verify_model_signature(data, trust=trust_keys(public)).kind == "key"


@pytest.fixture
def moto_kms() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


@pytest.mark.parametrize(
    ("spec", "curve"), [("ECC_NIST_P256", "P-256"), ("ECC_NIST_P521", "P-521")]
)
def test_kms_signer_through_moto(moto_kms: Any, spec: str, curve: str) -> None:
    key = moto_kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    signer = KmsSigner(key["Arn"], client=moto_kms)
    assert signer.curve == curve
    public = load_public_key(signer.public_key_pem())
    digest = {"P-256": hashes.SHA256(), "P-521": hashes.SHA512()}[curve]
    data = b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
    signature = signer.sign(data)
    hasher = hashes.Hash(digest)
    hasher.update(data)
    sent = hasher.finalize()
    try:
        public.verify(signature, data, ec.ECDSA(digest))
    except InvalidSignature:
        # moto 5 signs with real ECDSA but ignores MessageType=DIGEST: it hashes the digest
        # again. The signature is sound over that, and sign_model refuses to emit it.
        public.verify(signature, sent, ec.ECDSA(digest))
        files = [Resource("w.bin", "sha256", "ab" * 32)]
        with pytest.raises(KeyAccessError, match="does not verify under its own public key"):
            sign_model(files, model_name="m", signer=signer)
    else:  # a moto that honours DIGEST: the whole signature verifies
        files = [Resource("w.bin", "sha256", "ab" * 32)]
        data = sign_model(files, model_name="m", signer=signer)
        trust = OpenSSFTrust(keys=(public,))
        assert verify_model_signature(data, trust=trust).kind == "key"


def test_kms_signer_refuses_keys_model_signing_cannot_use(moto_kms: Any) -> None:
    rsa_key = moto_kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    with pytest.raises(InvalidInputError, match="P-256, P-384 or P-521"):
        KmsSigner(rsa_key["Arn"], client=moto_kms)
    k1 = moto_kms.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    with pytest.raises(InvalidInputError, match="secp256k1"):
        KmsSigner(k1["Arn"], client=moto_kms)
    symmetric = moto_kms.create_key()["KeyMetadata"]
    with pytest.raises((KeyAccessError, InvalidInputError)):
        KmsSigner(symmetric["Arn"], client=moto_kms)
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(KeyAccessError, match="NotFoundException"):
        KmsSigner(missing, client=moto_kms)


# -- Sigstore (keyless), offline -----------------------------------------------------------------


def sigstore_trust_config(folder: Path, instance: str = "tuf-repo-cdn.sigstore.dev") -> Path:
    """A ClientTrustConfig built from the trusted root and signing config that sigstore-python
    ships for its TUF bootstrap (production or staging): nothing copied into the repository."""
    import sigstore

    store = Path(sigstore.__file__).parent / "_store" / f"https%3A%2F%2F{instance}"
    if not (store / "trusted_root.json").exists():
        pytest.skip(f"sigstore {sigstore.__version__} ships no trusted root at {store}")
    config = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads((store / "trusted_root.json").read_text()),
        "signingConfig": json.loads((store / "signing_config.v0.2.json").read_text()),
    }
    path = folder / f"{instance}.trust.json"
    path.write_text(json.dumps(config))
    return path


def _as_keyless(data: bytes, leaf: x509.Certificate) -> bytes:
    """Our certificate bundle dressed as a keyless one: a Fulcio-style leaf and a log entry."""
    der = base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()
    entry = {
        "logIndex": "1",
        "logId": {"keyId": base64.b64encode(b"\0" * 32).decode()},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(int(NOW.timestamp())),
        "inclusionPromise": {"signedEntryTimestamp": base64.b64encode(b"\0" * 70).decode()},
        "inclusionProof": {
            "logIndex": "1",
            "rootHash": base64.b64encode(b"\0" * 32).decode(),
            "treeSize": "2",
            "hashes": [base64.b64encode(b"\0" * 32).decode()],
            "checkpoint": {"envelope": "rekor.sigstore.dev - 1\n2\nAAAA\n\n— rekor AAAA\n"},
        },
        "canonicalizedBody": base64.b64encode(b"{}").decode(),
    }
    return edit_bundle(
        data, lambda b: b.update(verificationMaterial={"certificate": {"rawBytes": der},
                                                       "tlogEntries": [entry]})
    )  # fmt: skip


def test_sigstore_bundles_are_refused_offline_without_trust(
    model_signing: list[str], pki: Pki, tmp_path: Path
) -> None:
    keyless = _as_keyless(_cert_signature(pki, pki.leaf), pki.leaf)
    with pytest.raises(IntegrityError, match="no Sigstore trust config"):
        verify_model_signature(keyless, trust=OpenSSFTrust(ca_roots=(pki.root,)))
    production = OpenSSFTrust(
        sigstore_trust_config=sigstore_trust_config(tmp_path),
        sigstore_identities=(("release-ci@example.com", "https://accounts.example.com"),),
    )
    # Not from Fulcio, no real log entry: refused by sigstore, offline, under the production root.
    with pytest.raises(IntegrityError, match="Sigstore verification failed"):
        verify_model_signature(keyless, trust=production)
    broken = edit_bundle(keyless, lambda b: b["verificationMaterial"]["certificate"].update(
        rawBytes=base64.b64encode(b"not a certificate").decode()))  # fmt: skip
    with pytest.raises(IntegrityError, match="Sigstore verification failed"):
        verify_model_signature(broken, trust=production)
    missing = OpenSSFTrust(
        sigstore_trust_config=tmp_path / "missing.json",
        sigstore_identities=production.sigstore_identities,
    )
    with pytest.raises(ConfigurationError, match="unusable"):
        verify_model_signature(keyless, trust=missing)


def _sigstore_identity(leaf: x509.Certificate) -> tuple[str, str]:
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    identity = [*names.get_values_for_type(x509.RFC822Name),
                *names.get_values_for_type(x509.UniformResourceIdentifier)][0]  # fmt: skip
    issuer_oid = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")  # DER UTF8String
    raw = leaf.extensions.get_extension_for_oid(issuer_oid).value
    assert isinstance(raw, x509.UnrecognizedExtension)
    return identity, raw.value[2:].decode()


SAMPLE = os.environ.get("MODEL_REGISTRY_SIGSTORE_SAMPLE")


@pytest.mark.skipif(
    not SAMPLE,
    reason="MODEL_REGISTRY_SIGSTORE_SAMPLE names no folder holding a production-signed model.sig "
    "(e.g. model_signing's scripts/tests/v1.1.0-sigstore): no such bundle can be made offline",
)
def test_a_production_sigstore_signature_verifies_offline(
    model_signing: list[str], tmp_path: Path
) -> None:
    model = Path(str(SAMPLE))
    data = (model / "model.sig").read_bytes()
    bundle = json.loads(data)
    raw = base64.b64decode(bundle["verificationMaterial"]["certificate"]["rawBytes"])
    identity, issuer = _sigstore_identity(x509.load_der_x509_certificate(raw))
    config = sigstore_trust_config(tmp_path)
    trust = OpenSSFTrust(sigstore_trust_config=config, sigstore_identities=((identity, issuer),))
    verified = verify_model_signature(data, trust=trust)
    assert (verified.kind, verified.identity, verified.issuer) == ("sigstore", identity, issuer)
    check_resources(verified, recorded(model))
    for wrong in [(("someone@example.com", issuer),), ((identity, "https://example.com"),)]:
        with pytest.raises(IntegrityError, match="Sigstore verification failed"):
            verify_model_signature(data, trust=OpenSSFTrust(sigstore_trust_config=config,
                                                            sigstore_identities=wrong))  # fmt: skip
    staging = OpenSSFTrust(
        sigstore_trust_config=sigstore_trust_config(tmp_path, "tuf-repo-cdn.sigstage.dev"),
        sigstore_identities=((identity, issuer),),
    )
    with pytest.raises(IntegrityError, match="Sigstore verification failed"):
        verify_model_signature(data, trust=staging)


def test_importing_the_module_loads_neither_model_signing_nor_sigstore() -> None:
    code = (
        "import sys, registry.crypto.openssf; "
        "print([m for m in ('model_signing', 'sigstore', 'botocore') if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "[]"
