"""Ed25519 manifest signatures: the signing key file, public key text form, sign and verify.

Public keys travel as `ed25519:<base64 of the 32 raw bytes>`; a key id is the first 16 hex digits
of the BLAKE3 digest of the raw public key. A manifest is accepted only when one of its signatures
verifies under a key listed in the configuration's trusted signers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry.errors import InvalidInputError, KeyAccessError, SignatureError

ALGORITHM = "ed25519"
SIGNATURE_DOMAIN = b"model-registry/manifest-signature/v1\n"


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes_raw()
    return f"{ALGORITHM}:{base64.b64encode(raw).decode()}"


def parse_public_key(text: str) -> Ed25519PublicKey:
    algorithm, _, body = text.strip().partition(":")
    try:
        if algorithm != ALGORITHM:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(body, validate=True))
    except (ValueError, binascii.Error):
        raise InvalidInputError(
            f"invalid public key {text[:80]!r}",
            hint="expected ed25519:<base64>, as printed by `model-registry keys show`",
        ) from None


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes_raw()
    return str(blake3.blake3(raw).hexdigest())[:16]


@dataclass(frozen=True)
class TrustedSigner:
    name: str
    public_key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)


class Signer:
    """Holds the Ed25519 private key that signs this registry's manifests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def create(cls, path: Path) -> Signer:
        # PEM and the key files only where a signing key is made or loaded: reading the
        # trusted keys (every command, with config.toml) needs neither.
        from cryptography.hazmat.primitives import serialization

        from registry.crypto.keys import write_secret_file

        private_key = Ed25519PrivateKey.generate()
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_secret_file(path, pem)
        return cls(private_key)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise KeyAccessError(
                f"signing key file {path} does not exist",
                hint="restore it from your backup, or run `model-registry init` on a new home",
            ) from None
        except (OSError, ValueError, TypeError) as error:
            raise KeyAccessError(f"cannot load signing key {path}: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyAccessError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, message: bytes) -> dict[str, str]:
        signature = self._private_key.sign(SIGNATURE_DOMAIN + message)
        return {
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode(),
        }


def verify_signatures(
    message: bytes,
    signatures: Sequence[Mapping[str, object]],
    trusted: Sequence[TrustedSigner],
    *,
    what: str,
) -> TrustedSigner:
    """Return the trusted signer whose signature over `message` verifies; else SignatureError."""
    if not signatures:
        raise SignatureError(f"{what}: manifest is not signed", path=what)
    by_id = {signer.key_id: signer for signer in trusted}
    for entry in signatures:
        if not isinstance(entry, Mapping):
            raise SignatureError(f"{what}: malformed signature entry", path=what)
        signer = by_id.get(str(entry.get("key_id")))
        if signer is None or entry.get("algorithm") != ALGORITHM:
            continue
        try:
            signature = base64.b64decode(str(entry.get("signature")), validate=True)
            signer.public_key.verify(signature, SIGNATURE_DOMAIN + message)
        except (InvalidSignature, binascii.Error, ValueError):
            raise SignatureError(
                f"{what}: signature by {signer.name} ({signer.key_id}) does not verify", path=what
            ) from None
        return signer
    ids = ", ".join(str(entry.get("key_id")) for entry in signatures)
    raise SignatureError(f"{what}: signed only by untrusted keys ({ids})", path=what)
