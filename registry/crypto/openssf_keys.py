"""Keys of OpenSSF model signatures: the EC curves model_signing accepts, their public key forms
(model_signing's hint, the fingerprint that names a key-mode signer), and the signers that make
the DSSE signature (a local PEM key, an AWS KMS key).

Only ECDSA on P-256, P-384 and P-521 is possible: model_signing verifies with the hash fixed by
the curve (SHA-256, SHA-384, SHA-512) and has no RSA or Ed25519 mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.errors import ConflictError, InvalidInputError, KeyAccessError

Curve = Literal["P-256", "P-384", "P-521"]


@dataclass(frozen=True)
class _CurveInfo:
    name: Curve
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    kms_algorithm: str


# model_signing accepts these three curves only, each with the hash the DSSE signature uses.
_CURVES: dict[str, _CurveInfo] = {
    "P-256": _CurveInfo("P-256", ec.SECP256R1, hashes.SHA256, "ECDSA_SHA_256"),
    "P-384": _CurveInfo("P-384", ec.SECP384R1, hashes.SHA384, "ECDSA_SHA_384"),
    "P-521": _CurveInfo("P-521", ec.SECP521R1, hashes.SHA512, "ECDSA_SHA_512"),
}
_CURVE_BY_NAME = {info.curve().name: info for info in _CURVES.values()}
ACCEPTED_KEYS = "ECDSA keys on P-256, P-384 or P-521 (what model_signing accepts)"


def curve_of(key: object, *, what: str) -> Curve:
    """The curve name of an EC key model_signing accepts; InvalidInputError for any other key."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        info = _CURVE_BY_NAME.get(key.curve.name)
        if info is not None:
            return info.name
        kind = f"an EC key on {key.curve.name}"
    else:
        kind = f"a {type(key).__name__.removeprefix('_')}"
    raise InvalidInputError(f"{what} is {kind}; OpenSSF model signatures need {ACCEPTED_KEYS}")


def curve_hash(curve: Curve) -> hashes.HashAlgorithm:
    """The hash an ECDSA signature on `curve` uses in model_signing."""
    return _CURVES[curve].hash()


def load_public_key(pem: bytes, *, what: str = "public key") -> ec.EllipticCurvePublicKey:
    """An EC public key from PEM SubjectPublicKeyInfo text; InvalidInputError otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise InvalidInputError(f"{what} is not a PEM public key: {error}") from None
    curve_of(key, what=what)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def pem_of(key: ec.EllipticCurvePublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo, as `cryptography` writes it (what model_signing's hint hashes)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_fingerprint(pem: bytes) -> str:
    """The identity of a key-mode signer: hex SHA-256 of the DER SubjectPublicKeyInfo."""
    der = load_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's `publicKey.hint`: hex SHA-256 of the PEM text `cryptography` writes (not of
    the DER, so it differs from the fingerprint); re-serialized, so the file's layout is moot."""
    return hashlib.sha256(pem_of(key)).hexdigest()


class OpenSSFSigner(Protocol):
    """Signs DSSE envelopes of model signatures: ECDSA with the hash that goes with the curve."""

    @property
    def curve(self) -> Curve: ...

    def public_key_pem(self) -> bytes:
        """The signer's public key, PEM SubjectPublicKeyInfo."""
        ...

    def sign(self, data: bytes) -> bytes:
        """The DER ECDSA signature over `data`, hashed with the curve's hash."""
        ...


class LocalKeySigner:
    """Signs with an EC private key held in this process (a PEM file)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._private_key = private_key
        self._curve = curve_of(private_key, what="the signing key")

    @property
    def curve(self) -> Curve:
        return self._curve

    @classmethod
    def from_file(cls, path: Path, *, password: bytes | None = None) -> LocalKeySigner:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyAccessError(f"signing key file {path} does not exist") from None
        except OSError as error:
            raise KeyAccessError(f"cannot read signing key {path}: {error}") from None
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as error:
            raise InvalidInputError(
                f"{path} is not a usable PEM private key: {error}",
                hint=f"give a PEM (PKCS#8 or SEC1) private key; OpenSSF signatures need "
                f"{ACCEPTED_KEYS}",
            ) from None
        curve_of(key, what=str(path))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key)

    def public_key_pem(self) -> bytes:
        return pem_of(self._private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data, ec.ECDSA(_CURVES[self._curve].hash()))


class KmsSigner:
    """Signs with an AWS KMS asymmetric key (ECC_NIST_P256/P384/P521, key usage SIGN_VERIFY).

    Only the digest travels to KMS (MessageType=DIGEST): the envelope of a large model is over
    the 4 KiB that KMS takes as a raw message. `client` is a boto3 KMS client.
    """

    def __init__(self, key_id: str, *, client: Any) -> None:
        self.key_id = key_id
        self._client = client
        response = self._call("GetPublicKey", KeyId=key_id)
        usage = response.get("KeyUsage")
        if usage is not None and usage != "SIGN_VERIFY":
            raise InvalidInputError(f"KMS key {key_id} has key usage {usage}, not SIGN_VERIFY")
        try:
            public_key = serialization.load_der_public_key(response["PublicKey"])
        except (KeyError, ValueError, TypeError) as error:
            raise KeyAccessError(
                f"KMS returned no usable public key for {key_id}: {error}"
            ) from None
        self._curve = curve_of(public_key, what=f"KMS key {key_id}")
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        self._public_key = public_key

    @property
    def curve(self) -> Curve:
        return self._curve

    def public_key_pem(self) -> bytes:
        return pem_of(self._public_key)

    def sign(self, data: bytes) -> bytes:
        info = _CURVES[self._curve]
        hasher = hashes.Hash(info.hash())
        hasher.update(data)
        response = self._call(
            "Sign",
            KeyId=self.key_id,
            Message=hasher.finalize(),
            MessageType="DIGEST",
            SigningAlgorithm=info.kms_algorithm,
        )
        signature = response.get("Signature")
        if not isinstance(signature, bytes):
            raise KeyAccessError(f"KMS returned no signature for {self.key_id}")
        return signature

    def _call(self, action: str, **kwargs: Any) -> dict[str, Any]:
        # botocore only where a KMS key signs: the rest of the module needs no AWS at all.
        from botocore.exceptions import BotoCoreError, ClientError

        method = getattr(self._client, "get_public_key" if action == "GetPublicKey" else "sign")
        try:
            response: dict[str, Any] = method(**kwargs)
        except ClientError as error:
            details = error.response.get("Error", {})
            raise KeyAccessError(
                f"KMS {action} with key {self.key_id} refused: {details.get('Code')}: "
                f"{details.get('Message')}",
                hint=f"check that the key exists in the client's region, is enabled, and that "
                f"this principal may call kms:{action} on it",
            ) from None
        except BotoCoreError as error:
            raise KeyAccessError(f"KMS {action} with key {self.key_id} failed: {error}") from None
        return response


def generate_key(path: Path, *, curve: Curve = "P-256") -> LocalKeySigner:
    """Write a new EC private key (PEM PKCS#8, mode 0600) to `path`; never replaces a file."""
    from registry.crypto.keys import write_secret_file

    if curve not in _CURVES:
        raise InvalidInputError(f"unknown curve {curve!r}: choose one of {', '.join(_CURVES)}")
    key = ec.generate_private_key(_CURVES[curve].curve())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        write_secret_file(path, pem)
    except FileExistsError:
        raise ConflictError(
            f"{path} already exists", hint="choose another path, or use the key that is there"
        ) from None
    return LocalKeySigner(key)
