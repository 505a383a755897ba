"""Key providers, key slots, key files and manifest signatures."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from registry.crypto.keys import (
    DATA_KEY_SIZE,
    KeyRing,
    LocalKeyProvider,
    WrappedKey,
    context_bytes,
    create_key_file,
    read_key_file,
)
from registry.crypto.signing import (
    Signer,
    TrustedSigner,
    key_id,
    parse_public_key,
    public_key_text,
    verify_signatures,
)
from registry.digest import hash_bytes
from registry.errors import IntegrityError, InvalidInputError, KeyAccessError, SignatureError

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))
DATA_KEY = bytes(range(64, 96))
CONTEXT = {"registry": "mr-1234", "purpose": "blob", "digest": hash_bytes(b"weights")}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- LocalKeyProvider --------------------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    assert wrapped.provider == "local"
    assert wrapped.kek_id == provider.kek_id
    assert DATA_KEY not in wrapped.ciphertext
    assert provider.unwrap(wrapped, context=CONTEXT, what="f") == DATA_KEY
    # Context order does not matter: it is canonicalised.
    reordered = dict(reversed(list(CONTEXT.items())))
    assert provider.unwrap(wrapped, context=reordered, what="f") == DATA_KEY
    # Another provider instance with the same KEK opens it too.
    assert LocalKeyProvider(KEK).unwrap(wrapped, context=CONTEXT, what="f") == DATA_KEY


def test_wrapping_is_randomised() -> None:
    provider = LocalKeyProvider(KEK)
    first = provider.wrap(DATA_KEY, context=CONTEXT)
    second = provider.wrap(DATA_KEY, context=CONTEXT)
    assert first.ciphertext != second.ciphertext


def test_generate_gives_fresh_keys() -> None:
    provider = LocalKeyProvider(KEK)
    key, wrapped = provider.generate(context=CONTEXT)
    other, _ = provider.generate(context=CONTEXT)
    assert len(key) == DATA_KEY_SIZE
    assert key != other
    assert provider.unwrap(wrapped, context=CONTEXT, what="f") == key


@pytest.mark.parametrize(
    "changed",
    [
        {"digest": hash_bytes(b"other weights")},
        {"registry": "mr-5678"},
        {"purpose": "manifest"},
        {"extra": "x"},
    ],
    ids=["digest", "registry", "purpose", "extra-key"],
)
def test_unwrap_with_another_context_fails(changed: dict[str, str]) -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    with pytest.raises(IntegrityError, match="failed authentication") as info:
        provider.unwrap(wrapped, context={**CONTEXT, **changed}, what="model/x.bin")
    assert info.value.path == "model/x.bin"


def test_unwrap_with_a_context_key_missing_fails() -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, context={"registry": "mr-1234", "purpose": "blob"}, what="f")


def test_context_bytes_is_canonical() -> None:
    assert context_bytes({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'
    assert context_bytes({"a": "1", "b": "2"}) == context_bytes({"b": "2", "a": "1"})


def test_any_flipped_bit_in_the_wrapped_key_fails() -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    assert len(wrapped.ciphertext) == 12 + DATA_KEY_SIZE + 16
    for byte in range(len(wrapped.ciphertext)):
        for bit in (0, 7):
            damaged = bytearray(wrapped.ciphertext)
            damaged[byte] ^= 1 << bit
            slot = WrappedKey(wrapped.provider, wrapped.kek_id, bytes(damaged))
            with pytest.raises(IntegrityError):
                provider.unwrap(slot, context=CONTEXT, what="f")


@pytest.mark.parametrize("cut", [0, 5, 12, 20, 12 + DATA_KEY_SIZE + 15])
def test_truncated_wrapped_key_fails(cut: int) -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    slot = WrappedKey(wrapped.provider, wrapped.kek_id, wrapped.ciphertext[:cut])
    with pytest.raises(IntegrityError):
        provider.unwrap(slot, context=CONTEXT, what="f")


def test_wrapped_short_data_key_is_refused() -> None:
    provider = LocalKeyProvider(KEK)
    slot = provider.wrap(DATA_KEY[:16], context=CONTEXT)
    with pytest.raises(IntegrityError, match="malformed data key"):
        provider.unwrap(slot, context=CONTEXT, what="f")


def test_another_kek_is_a_key_access_error() -> None:
    wrapped = LocalKeyProvider(KEK).wrap(DATA_KEY, context=CONTEXT)
    other = LocalKeyProvider(OTHER_KEK)
    with pytest.raises(KeyAccessError, match="wrong key file") as info:
        other.unwrap(wrapped, context=CONTEXT, what="f")
    assert info.value.hint
    assert wrapped.kek_id in str(info.value)
    assert other.kek_id in str(info.value)


def test_a_slot_claiming_this_kek_but_wrapped_by_another_fails_integrity() -> None:
    wrapped = LocalKeyProvider(OTHER_KEK).wrap(DATA_KEY, context=CONTEXT)
    provider = LocalKeyProvider(KEK)
    forged = WrappedKey("local", provider.kek_id, wrapped.ciphertext)
    with pytest.raises(IntegrityError):
        provider.unwrap(forged, context=CONTEXT, what="f")


def test_another_provider_name_is_a_key_access_error() -> None:
    provider = LocalKeyProvider(KEK)
    wrapped = provider.wrap(DATA_KEY, context=CONTEXT)
    with pytest.raises(KeyAccessError):
        provider.unwrap(
            WrappedKey("aws-kms", wrapped.kek_id, wrapped.ciphertext), context=CONTEXT, what="f"
        )


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_kek_must_have_32_bytes(size: int) -> None:
    with pytest.raises(KeyAccessError):
        LocalKeyProvider(bytes(size))


def test_kek_id_is_stable_and_distinct() -> None:
    first = LocalKeyProvider(KEK).kek_id
    assert first == LocalKeyProvider(bytes(KEK)).kek_id
    assert first != LocalKeyProvider(OTHER_KEK).kek_id
    assert first.startswith("local:")
    assert len(first) == len("local:") + 24
    int(first.removeprefix("local:"), 16)
    assert KEK.hex()[:24] not in first  # a fingerprint, not the key


# -- WrappedKey JSON ---------------------------------------------------------------------------


def test_wrapped_key_json_round_trip() -> None:
    wrapped = LocalKeyProvider(KEK).wrap(DATA_KEY, context=CONTEXT)
    data = wrapped.to_json()
    assert json.loads(data)["format"] == "model-registry/key-slot/v1"
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert WrappedKey.from_json(data, what="slot") == wrapped
    restored = WrappedKey.from_json(data, what="slot")
    assert LocalKeyProvider(KEK).unwrap(restored, context=CONTEXT, what="f") == DATA_KEY


def _slot(**fields: object) -> bytes:
    base: dict[str, object] = {
        "format": "model-registry/key-slot/v1",
        "provider": "local",
        "kek_id": "local:abc",
        "wrapped": base64.b64encode(b"x" * 60).decode(),
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"a string"',
        b"{}",
        _slot(format="model-registry/key-slot/v2"),
        _slot(provider=None),
        _slot(kek_id=None),
        _slot(wrapped=None),
        _slot(wrapped="not base64!"),
        _slot(wrapped="YWJj\n"),
        _slot(wrapped=12),
    ],
    ids=[
        "empty", "garbage", "not-utf8", "null", "list", "string", "empty-object", "format-v2",
        "no-provider", "no-kek-id", "no-wrapped", "bad-base64", "base64-newline", "wrapped-int",
    ],
)  # fmt: skip
def test_malformed_wrapped_key_json(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="malformed key slot") as info:
        WrappedKey.from_json(data, what="slot.json")
    assert info.value.path == "slot.json"


# -- key files ---------------------------------------------------------------------------------


def test_create_key_file_is_private_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek"
    create_key_file(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    key = read_key_file(path)
    assert len(key) == 32
    assert LocalKeyProvider.from_file(path).kek_id == LocalKeyProvider(key).kek_id
    assert path.read_text().startswith("#")

    second = tmp_path / "keys" / "kek2"
    create_key_file(second)
    assert read_key_file(second) != key


def test_create_key_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    create_key_file(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        create_key_file(path)
    assert path.read_bytes() == before

    other = tmp_path / "existing"
    other.write_text("precious")
    with pytest.raises(FileExistsError):
        create_key_file(other)
    assert other.read_text() == "precious"


def test_read_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(KeyAccessError, match="does not exist") as info:
        read_key_file(tmp_path / "nope")
    assert "backup" in info.value.hint


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# only a comment\n",
        b"garbage that is not base64\n",
        base64.b64encode(os.urandom(31)) + b"\n",
        base64.b64encode(os.urandom(33)) + b"\n",
        base64.b64encode(os.urandom(32)) + b"\n" + base64.b64encode(os.urandom(32)) + b"\n",
        b"\xff\xfe\x00 not text",
    ],
    ids=["empty", "comment-only", "garbage", "31-bytes", "33-bytes", "two-keys", "binary"],
)
def test_read_key_file_refuses_bad_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "kek"
    path.write_bytes(content)
    with pytest.raises(KeyAccessError) as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    if content != b"\xff\xfe\x00 not text":
        assert "backup" in info.value.hint


def test_read_key_file_accepts_surrounding_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_bytes(b"# header\n\n  " + base64.b64encode(KEK) + b"  \n\n")
    assert read_key_file(path) == KEK


def test_read_key_file_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyAccessError):
        read_key_file(tmp_path)


# -- signing -----------------------------------------------------------------------------------


def test_signer_create_and_load(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    signer = Signer.create(path)
    assert _mode(path) == 0o600
    loaded = Signer.from_file(path)
    assert loaded.key_id == signer.key_id
    assert public_key_text(loaded.public_key) == public_key_text(signer.public_key)
    trusted = [TrustedSigner("me", signer.public_key)]
    assert verify_signatures(b"m", [loaded.sign(b"m")], trusted, what="v").name == "me"
    with pytest.raises(FileExistsError):
        Signer.create(path)


def test_signer_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyAccessError, match="does not exist"):
        Signer.from_file(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyAccessError):
        Signer.from_file(garbage)
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyAccessError, match="not an Ed25519"):
        Signer.from_file(ec_key)


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def test_verify_accepts_a_good_signature(signer: Signer) -> None:
    message = b'{"manifest":1}'
    signature = signer.sign(message)
    assert signature["algorithm"] == "ed25519"
    assert signature["key_id"] == signer.key_id == key_id(signer.public_key)
    trusted = TrustedSigner("ci", signer.public_key)
    assert verify_signatures(message, [signature], [trusted], what="v") is trusted


def test_verify_skips_untrusted_signatures_when_a_trusted_one_verifies(signer: Signer) -> None:
    stranger = Signer(Ed25519PrivateKey.generate())
    trusted = TrustedSigner("ci", signer.public_key)
    signatures = [stranger.sign(b"m"), signer.sign(b"m")]
    assert verify_signatures(b"m", signatures, [trusted], what="v") is trusted


def test_verify_refuses_an_empty_list(signer: Signer) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_signatures(b"m", [], [TrustedSigner("ci", signer.public_key)], what="v")


def test_verify_refuses_an_untrusted_key(signer: Signer) -> None:
    stranger = Signer(Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="untrusted") as info:
        verify_signatures(
            b"m", [stranger.sign(b"m")], [TrustedSigner("ci", signer.public_key)], what="v"
        )
    assert stranger.key_id in str(info.value)
    with pytest.raises(SignatureError, match="untrusted"):
        verify_signatures(b"m", [signer.sign(b"m")], [], what="v")


def test_verify_refuses_a_signature_over_other_bytes(signer: Signer) -> None:
    trusted = [TrustedSigner("ci", signer.public_key)]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signatures(b"manifest B", [signer.sign(b"manifest A")], trusted, what="v")
    # Without the domain prefix a raw Ed25519 signature of the message does not verify either.
    raw = dict(signer.sign(b"m"))
    raw["signature"] = base64.b64encode(signer._private_key.sign(b"m")).decode()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signatures(b"m", [raw], trusted, what="v")


def test_verify_refuses_a_forged_key_id(signer: Signer) -> None:
    impostor = Signer(Ed25519PrivateKey.generate())
    signature = impostor.sign(b"m")
    signature["key_id"] = signer.key_id
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signatures(b"m", [signature], [TrustedSigner("ci", signer.public_key)], what="v")


@pytest.mark.parametrize("garbled", ["not base64!", "", "AAAA", "YWJj\n", None])
def test_verify_refuses_garbled_base64(signer: Signer, garbled: str | None) -> None:
    signature: dict[str, object] = dict(signer.sign(b"m"))
    signature["signature"] = garbled
    with pytest.raises(SignatureError):
        verify_signatures(b"m", [signature], [TrustedSigner("ci", signer.public_key)], what="v")


def test_verify_refuses_another_algorithm(signer: Signer) -> None:
    signature = dict(signer.sign(b"m"))
    signature["algorithm"] = "rsa"
    with pytest.raises(SignatureError):
        verify_signatures(b"m", [signature], [TrustedSigner("ci", signer.public_key)], what="v")


def test_public_key_text_round_trip(signer: Signer) -> None:
    text = public_key_text(signer.public_key)
    assert text.startswith("ed25519:")
    parsed = parse_public_key(f"  {text}\n")
    assert key_id(parsed) == signer.key_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "ed25519:",
        "ed25519:!!!!",
        "ed25519:" + base64.b64encode(bytes(31)).decode(),
        "ed25519:" + base64.b64encode(bytes(33)).decode(),
        "rsa:" + base64.b64encode(bytes(32)).decode(),
        base64.b64encode(bytes(32)).decode(),
    ],
)
def test_parse_public_key_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_public_key(text)
    assert "ed25519:<base64>" in info.value.hint


def test_key_id_differs_per_key(signer: Signer) -> None:
    other = Signer(Ed25519PrivateKey.generate())
    assert signer.key_id != other.key_id
    assert len(signer.key_id) == 16
    assert key_id(signer.public_key) == key_id(parse_public_key(public_key_text(signer.public_key)))


def test_a_kms_is_across_a_network_a_key_file_is_not_and_a_ring_is_as_its_current_key() -> None:
    """Whether key requests are worth overlapping (an upload session's keys are chosen together
    only where they are): a KMS's are network round trips, a key file's are not, and a key ring
    wraps with its current key."""
    from registry.crypto.kms import KmsKeyProvider

    kms = KmsKeyProvider(
        "arn:aws:kms:eu-west-1:111122223333:key/1234", region="eu-west-1", client=object()
    )
    local = LocalKeyProvider(KEK)
    assert kms.latency_bound and not local.latency_bound
    assert KeyRing(kms, [local]).latency_bound
    assert not KeyRing(local, [kms]).latency_bound
