"""OpenSSF model signatures (`model.sig`, the format of `model_signing` 1.x), made and checked.

A `model.sig` is a Sigstore bundle v0.3 (one line of compact JSON) holding a DSSE envelope over an
in-toto statement: predicate type `https://model_signing/signature/v1.0`, serialization method
"files", and one resource {name, algorithm, digest} per file. The statement's subject digest is
SHA-256 over the raw resource digests in list order. The registry makes and checks these from the
digests it records at push time: nothing here reads or hashes a model file.

Three kinds of signature are checked: "key" (an ECDSA key the trust lists, found by the bundle's
hint: SHA-256 of the PEM SubjectPublicKeyInfo), "certificate" (an X.509 leaf whose chain leads to a
trusted CA, valid now) and "sigstore" (keyless: Fulcio certificate and Rekor entry, checked offline
by the `sigstore` library against a trust config file). Signatures are made in key mode (or
certificate mode when a chain is given) with a local EC key or an AWS KMS key. The stock
`model_signing verify` CLI re-hashes every file with SHA-256, so signatures meant for it must list
SHA-256 resources; BLAKE3 ones verify through model_signing's Python API only.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.crypto.openssf_keys import (
    Curve,
    KmsSigner,
    LocalKeySigner,
    OpenSSFSigner,
    curve_hash,
    curve_of,
    generate_key,
    key_hint,
    load_public_key,
    pem_of,
    public_key_fingerprint,
)
from registry.digest import hash_bytes
from registry.errors import ConfigurationError, IntegrityError, InvalidInputError, KeyAccessError
from registry.refs import validate_relative_path

# The keys and signers live beside this module; callers import everything from here.
__all__ = [
    "Curve",
    "KmsSigner",
    "LocalKeySigner",
    "OpenSSFSigner",
    "OpenSSFTrust",
    "Resource",
    "VerifiedSignature",
    "check_resources",
    "generate_key",
    "key_hint",
    "load_public_key",
    "pae",
    "public_key_fingerprint",
    "sign_model",
    "verify_model_signature",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
# Keyless bundles are read by sigstore-python, which also takes the older media type spellings.
SIGSTORE_MEDIA_TYPES = frozenset(
    {
        BUNDLE_MEDIA_TYPE,
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    }
)
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SIGNATURE_NAME = "model.sig"
# model_signing's CLI never hashes these root paths unless told to: a signature listing one of
# them fails the default `model_signing verify` with "Missing files".
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
HASH_TYPES = ("sha256", "blake3")
DIGEST_SIZE = 32  # both SHA-256 and BLAKE3-256

SignatureKind = Literal["key", "certificate", "sigstore"]
EXTRA_HINT = "install the provenance extra: pip install 'model-registry[provenance]'"


@dataclass(frozen=True)
class Resource:
    """One signed file: its path in the model, the digest algorithm and the hex digest."""

    path: str
    algorithm: str
    digest: str

    def __post_init__(self) -> None:
        validate_relative_path(self.path, what="signed file path")
        if self.algorithm not in HASH_TYPES:
            raise InvalidInputError(
                f"{self.path}: digest algorithm {self.algorithm!r} is not one of {HASH_TYPES}"
            )
        try:
            raw = bytes.fromhex(self.digest)
        except ValueError:
            raw = b""
        if len(raw) != DIGEST_SIZE or raw.hex() != self.digest:
            raise InvalidInputError(
                f"{self.path}: {self.algorithm} digest {self.digest[:80]!r} is not "
                f"{2 * DIGEST_SIZE} lower-case hex digits"
            )


# -- signing ----------------------------------------------------------------------------------


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers (lengths in bytes)."""
    kind = PAYLOAD_TYPE.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _sort_key(path: str) -> tuple[str, ...]:
    # model_signing sorts by PurePosixPath, component by component: "a/b" < "a-b/c" < "a.txt",
    # which plain string order does not give.
    return tuple(path.split("/"))


def _under(path: str, prefix: str) -> bool:
    # Like model_signing's Path.is_relative_to: whole components, no globs.
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _subject_digest(resources: Sequence[Resource]) -> str:
    hasher = hashlib.sha256()
    for resource in resources:
        hasher.update(bytes.fromhex(resource.digest))
    return hasher.hexdigest()


def _statement(
    resources: Sequence[Resource], *, model_name: str, ignore_paths: Sequence[str]
) -> dict[str, Any]:
    if not resources:
        raise InvalidInputError("nothing to sign: the model has no files")
    ordered = sorted(resources, key=lambda r: _sort_key(r.path))
    hash_types = {r.algorithm for r in ordered}
    if len(hash_types) != 1:
        raise InvalidInputError(
            f"files to sign carry digests of {sorted(hash_types)}: a signature has one hash type"
        )
    paths = [r.path for r in ordered]
    if len(set(paths)) != len(paths):
        twice = sorted({p for p in paths if paths.count(p) > 1})
        raise InvalidInputError(f"files listed twice: {', '.join(twice)}")
    # The signature file itself is always skipped, wherever a verifier is told it lies.
    ignored = sorted(
        {validate_relative_path(p, what="ignored path") for p in ignore_paths} | {SIGNATURE_NAME}
    )
    for resource in ordered:
        if any(_under(resource.path, g) for g in GIT_PATHS):
            raise InvalidInputError(
                f"{resource.path}: model_signing's CLI skips root {', '.join(GIT_PATHS)}, so a "
                "signature listing it fails there",
                hint="leave it out of the signed files and name it in ignore_paths",
            )
        covering = [g for g in ignored if _under(resource.path, g)]
        if covering:
            raise InvalidInputError(
                f"{resource.path} is signed but lies under ignored {covering[0]}"
            )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": _subject_digest(ordered)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": ordered[0].algorithm,
                "allow_symlinks": False,  # model_signing's reader needs the key present
                "ignore_paths": ignored,
            },
            "resources": [
                {"name": r.path, "algorithm": r.algorithm, "digest": r.digest} for r in ordered
            ],
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")  # standard alphabet, padded: model_signing's


def sign_model(
    resources: Sequence[Resource],
    *,
    model_name: str,
    signer: OpenSSFSigner,
    ignore_paths: Sequence[str] = (),
    certificate_chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """The bytes of a `model.sig` over `resources` (digests as recorded; nothing is re-hashed).

    Key mode, or certificate mode when `certificate_chain` (leaf first, then intermediates) is
    given. `ignore_paths` (always with model.sig) are files a verifier may find and skip.
    """
    statement = _statement(resources, model_name=model_name, ignore_paths=ignore_paths)
    # Any JSON verifies (the verifier parses the signed bytes); compact and in a fixed key order
    # so the same files give the same payload.
    payload = json.dumps(statement, separators=(",", ":"), ensure_ascii=False).encode()
    public_key = load_public_key(signer.public_key_pem(), what="the signer's public key")
    curve = curve_of(public_key, what="the signer's public key")
    if signer.curve != curve:
        raise InvalidInputError(f"the signer says {signer.curve} but its key is on {curve}")
    signature = signer.sign(pae(payload))
    try:
        # A signer that signs something else (a KMS that re-hashes the digest, raw r||s instead
        # of DER, another key) must fail here, not in every verifier later.
        public_key.verify(signature, pae(payload), ec.ECDSA(curve_hash(curve)))
    except (InvalidSignature, ValueError):
        raise KeyAccessError(
            "the signer's signature does not verify under its own public key",
            hint="a KMS key must sign digests (MessageType=DIGEST) and return DER ECDSA",
        ) from None
    material: dict[str, Any]
    if certificate_chain:
        if certificate_chain[0].public_key() != public_key:
            raise InvalidInputError("the leaf certificate is not for the signing key")
        raw = [c.public_bytes(serialization.Encoding.DER) for c in certificate_chain]
        material = {"x509CertificateChain": {"certificates": [{"rawBytes": _b64(c)} for c in raw]}}
    else:
        material = {"publicKey": {"hint": key_hint(public_key)}}
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {**material, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


# -- trust and verification -------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSSFTrust:
    """Whom a verifier believes: public keys (key mode), CA roots (certificate mode), a Sigstore
    trust config file with the (identity, OIDC issuer) pairs it accepts (keyless mode)."""

    keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    ca_roots: tuple[x509.Certificate, ...] = ()
    sigstore_trust_config: Path | None = None
    sigstore_identities: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for index, key in enumerate(self.keys):
            curve_of(key, what=f"trusted key {index + 1}")
        for pair in self.sigstore_identities:
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise InvalidInputError(f"sigstore identity {pair!r} is not (identity, issuer)")

    @classmethod
    def from_files(
        cls,
        *,
        keys: Sequence[Path] = (),
        ca_roots: Sequence[Path] = (),
        sigstore_trust_config: Path | None = None,
        sigstore_identities: Sequence[tuple[str, str]] = (),
    ) -> OpenSSFTrust:
        """Public keys and CA certificates from PEM files (a CA file may hold several)."""
        loaded = tuple(load_public_key(_read(p), what=str(p)) for p in keys)
        roots: list[x509.Certificate] = []
        for path in ca_roots:
            try:
                roots += x509.load_pem_x509_certificates(_read(path))
            except ValueError as error:
                raise InvalidInputError(f"{path} holds no PEM certificate: {error}") from None
        return cls(loaded, tuple(roots), sigstore_trust_config, tuple(sigstore_identities))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error}") from None


@dataclass(frozen=True)
class VerifiedSignature:
    """What a verified `model.sig` says: who signed (`identity`: key fingerprint, certificate SAN
    or CN, Sigstore identity; `issuer`: the CA root or OIDC issuer) and which file digests."""

    kind: SignatureKind
    identity: str
    issuer: str | None
    model_name: str
    resources: dict[str, Resource] = field(repr=False)
    hash_type: str
    ignore_paths: tuple[str, ...]
    bundle_digest: str  # blake3:<hex> of the model.sig bytes, as the registry names content


@dataclass(frozen=True)
class _Envelope:
    kind: SignatureKind
    material: dict[str, Any]
    payload: bytes
    signature: bytes


DAMAGED_HINT = (
    "the signature file is damaged, forged or not an OpenSSF model signature; sign the model "
    "again (model_signing sign)"
)
KEY_HINT = (
    "list the signer's public key (PEM) in [openssf] trusted_keys of config.toml, only if you "
    "know whose it is"
)
CA_HINT = "trust the root of the signer's CA (PEM) only if you trust what it certifies"
SIGSTORE_HINT = (
    "check the accepted (identity, OIDC issuer) pairs and that the Sigstore trust config is for "
    "the instance that signed (public-good Sigstore or a private one)"
)


def _bad(message: str, *, hint: str = DAMAGED_HINT) -> IntegrityError:
    return IntegrityError(f"model.sig: {message}", hint=hint)


def _object(value: object, what: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    # model_signing's bundle models forbid unknown fields: so do we, naming the field.
    if not isinstance(value, dict):
        raise _bad(f"{what} is not a JSON object")
    missing = required - value.keys()
    unknown = value.keys() - required - optional
    if missing:
        raise _bad(f"{what} lacks {', '.join(sorted(missing))}")
    if unknown:
        raise _bad(f"{what} has unknown field {', '.join(sorted(unknown))}")
    return value


def _unb64(value: object, what: str) -> bytes:
    try:
        if not isinstance(value, str):
            raise ValueError
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise _bad(f"{what} is not standard base64") from None


def _parse_bundle(data: bytes) -> _Envelope:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(f"not JSON: {error}") from None
    bundle = _object(
        raw, "the bundle", {"mediaType", "verificationMaterial", "dsseEnvelope"}, set()
    )
    kinds = {"publicKey", "x509CertificateChain", "certificate"}
    material = _object(
        bundle["verificationMaterial"],
        "verificationMaterial",
        set(),
        kinds | {"tlogEntries", "timestampVerificationData"},
    )
    present = kinds & material.keys()
    if len(present) != 1:
        raise _bad("verificationMaterial needs exactly one of " + ", ".join(sorted(kinds)))
    tlog = material.get("tlogEntries", [])
    if not isinstance(tlog, list):
        raise _bad("tlogEntries is not a list")
    kind: SignatureKind
    if "certificate" in material or tlog:
        kind = "sigstore"
    else:
        kind = "key" if "publicKey" in material else "certificate"
        if "timestampVerificationData" in material:
            raise _bad(f"a {kind}-mode signature carries timestamps nothing here checks")
    media_type = bundle["mediaType"]
    allowed = SIGSTORE_MEDIA_TYPES if kind == "sigstore" else {BUNDLE_MEDIA_TYPE}
    if not isinstance(media_type, str) or media_type not in allowed:
        raise _bad(f"mediaType {str(media_type)[:80]!r} is not {BUNDLE_MEDIA_TYPE}")
    envelope = _object(
        bundle["dsseEnvelope"], "dsseEnvelope", {"payload", "payloadType", "signatures"}, set()
    )
    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise _bad(f"payloadType {str(envelope['payloadType'])[:80]!r} is not {PAYLOAD_TYPE}")
    signatures = envelope["signatures"]
    # model_signing checks only the first signature: a second one would be unchecked text.
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise _bad("the DSSE envelope needs exactly one signature")
    # keyid is an unsigned label (model_signing writes "" and reads nothing from it).
    entry = _object(signatures[0], "the DSSE signature", {"sig"}, {"keyid"})
    if not isinstance(entry.get("keyid", ""), str | None):
        raise _bad("the DSSE signature's keyid is not a string")
    return _Envelope(
        kind,
        material,
        _unb64(envelope["payload"], "the payload"),
        _unb64(entry["sig"], "the signature"),
    )


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, envelope: _Envelope) -> bool:
    digest = curve_hash(curve_of(key, what="the signing key"))
    try:
        key.verify(envelope.signature, pae(envelope.payload), ec.ECDSA(digest))
    except (InvalidSignature, ValueError):  # ValueError: not even DER
        return False
    return True


def _verify_key(envelope: _Envelope, trust: OpenSSFTrust) -> tuple[str, str | None]:
    # rawBytes and keyDetails are what model_signing 1.0 wrote; its reader drops them, so do we:
    # only a trusted key can make the signature verify.
    public = _object(
        envelope.material["publicKey"], "publicKey", set(), {"hint", "rawBytes", "keyDetails"}
    )
    hint = public.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise _bad("publicKey.hint is not a string")
    candidates = [k for k in trust.keys if hint is None or key_hint(k) == hint]
    if not candidates:
        raise _bad(
            f"signed by a key that is not among the trusted OpenSSF keys (its key hint {hint})",
            hint=KEY_HINT,
        )
    for key in candidates:
        if _verify_ecdsa(key, envelope):
            return public_key_fingerprint(pem_of(key)), None
    raise _bad("the signature does not verify under the trusted key")


def _signing_usage(leaf: x509.Certificate) -> None:
    """A leaf that says what it is for must say signing (model_signing wants either of the two;
    a TLS server certificate with digitalSignature passes there, not here)."""
    extensions = leaf.extensions
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise _bad("the leaf certificate's key usage does not allow digital signatures")
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING not in purposes:
            raise _bad("the leaf certificate's extended key usage does not include code signing")
    except x509.ExtensionNotFound:
        pass


def _certificate_identity(leaf: x509.Certificate) -> str:
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier):
            values = names.get_values_for_type(kind)
            if values:
                return str(values[0])
    except x509.ExtensionNotFound:
        pass
    common = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common:
        raise _bad("the leaf certificate names no identity (no e-mail or URI SAN, no CN)")
    return str(common[0].value)


def _verify_certificate(envelope: _Envelope, trust: OpenSSFTrust) -> tuple[str, str | None]:
    from cryptography.x509 import verification

    chain = _object(
        envelope.material["x509CertificateChain"], "x509CertificateChain", {"certificates"}, set()
    )["certificates"]
    if not isinstance(chain, list) or not chain:
        raise _bad("the certificate chain is empty")
    try:
        certificates = [
            x509.load_der_x509_certificate(
                _unb64(_object(c, "a certificate", {"rawBytes"}, set())["rawBytes"], "rawBytes")
            )
            for c in chain
        ]
    except ValueError as error:
        raise _bad(f"a certificate does not parse: {error}") from None
    if not trust.ca_roots:
        raise _bad("a certificate-mode signature, but the trust lists no CA root", hint=CA_HINT)
    leaf = certificates[0]
    # model_signing checks the chain at the leaf's notBefore, so it takes expired leaves; here
    # every certificate must be valid now.
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise _bad(
            f"the leaf certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now",
            hint="the signer must sign again with a certificate valid now",
        )
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trust.ca_roots)))
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            # No WebPKI end-entity rules (SAN and serverAuth/clientAuth): signing leaves have
            # neither; their usage is checked below.
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, certificates[1:])
    except verification.VerificationError as error:
        raise _bad(
            f"the certificate chain does not lead to a trusted CA: {error}", hint=CA_HINT
        ) from None
    _signing_usage(leaf)
    key = leaf.public_key()
    curve_of(key, what="the leaf certificate's key")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    if not _verify_ecdsa(key, envelope):
        raise _bad("the signature does not verify under the leaf certificate's key")
    return _certificate_identity(leaf), verified.chain[-1].subject.rfc4514_string()


def _verify_sigstore(
    data: bytes, envelope: _Envelope, trust: OpenSSFTrust
) -> tuple[str, str | None]:
    if trust.sigstore_trust_config is None or not trust.sigstore_identities:
        raise _bad(
            "a Sigstore (keyless) signature, but no Sigstore trust config and identities",
            hint=SIGSTORE_HINT,
        )
    try:
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
        from sigstore.verify import Verifier, policy
    except ImportError:
        raise ConfigurationError(
            "Sigstore signatures need the sigstore library", hint=EXTRA_HINT
        ) from None
    path = trust.sigstore_trust_config
    try:
        text = path.read_text()
        # A ClientTrustConfig (what `model_signing --trust_config` takes) or a bare TrustedRoot.
        if "trustedRoot" in json.loads(text):
            root = ClientTrustConfig.from_json(text).trusted_root
        else:
            root = TrustedRoot.from_file(str(path))
    except (OSError, ValueError, TypeError, SigstoreError) as error:
        raise ConfigurationError(
            f"Sigstore trust config {path} is unusable: {error}",
            hint="give a ClientTrustConfig JSON (trustedRoot and signingConfig)",
        ) from None
    wanted: list[policy.VerificationPolicy] = [
        policy.Identity(identity=i, issuer=s) for i, s in trust.sigstore_identities
    ]
    try:
        bundle = Bundle.from_json(data)
        kind, payload = Verifier(trusted_root=root).verify_dsse(bundle, policy.AnyOf(wanted))
    except (SigstoreError, ValueError) as error:
        raise _bad(f"Sigstore verification failed: {error}", hint=SIGSTORE_HINT) from None
    if kind != PAYLOAD_TYPE or payload != envelope.payload:
        raise _bad("Sigstore verified another payload than the envelope holds")
    for (identity, issuer), rule in zip(trust.sigstore_identities, wanted, strict=True):
        try:
            rule.verify(bundle.signing_certificate)
        except SigstoreError:
            continue
        return identity, issuer
    raise _bad("no trusted Sigstore identity matches")  # AnyOf passed: cannot happen


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} is not a string")
    return value


def _path(value: object, what: str) -> str:
    try:
        return validate_relative_path(_text(value, what), what=what)
    except InvalidInputError as error:
        raise _bad(error.message) from None


def _parse_resources(items: object, hash_type: str) -> list[Resource]:
    if not isinstance(items, list) or not items:
        raise _bad("the statement lists no resources")
    resources: list[Resource] = []
    for item in items:
        entry = _object(item, "a resource", {"name", "algorithm", "digest"}, set())
        name = _path(entry["name"], "a resource name")
        if entry["algorithm"] != hash_type:
            raise _bad(f"{name}: algorithm {entry['algorithm']!r} is not hash_type {hash_type}")
        try:
            resources.append(Resource(name, hash_type, _text(entry["digest"], f"{name} digest")))
        except InvalidInputError as error:
            raise _bad(error.message) from None
    return resources


def _parse_statement(payload: bytes) -> tuple[str, list[Resource], str, tuple[str, ...]]:
    """(model name, resources, hash type, ignore paths) of a signed statement, strictly."""
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(f"the payload is not JSON: {error}") from None
    if not isinstance(statement, dict):
        raise _bad("the statement is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise _bad(f"the statement type is not {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise _bad(f"the predicate type {statement.get('predicateType')!r} is not {PREDICATE_TYPE}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise _bad("the statement needs exactly one subject")
    subject = _object(subjects[0], "the subject", {"name", "digest"}, set())
    digest = _object(subject["digest"], "the subject digest", {"sha256"}, set())["sha256"]
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise _bad("the statement has no predicate")
    serialization_ = _object(
        predicate.get("serialization"),
        "serialization",
        {"method", "hash_type", "allow_symlinks"},
        {"ignore_paths", "shard_size"},
    )
    if serialization_["method"] != "files":
        raise _bad(f"serialization method {serialization_['method']!r}: only 'files' is read")
    hash_type = serialization_["hash_type"]
    if hash_type not in HASH_TYPES:
        raise _bad(f"hash_type {hash_type!r}: the registry records {' and '.join(HASH_TYPES)}")
    if not isinstance(serialization_["allow_symlinks"], bool):
        raise _bad("allow_symlinks is not a boolean")
    ignored = serialization_.get("ignore_paths", [])
    if not isinstance(ignored, list):
        raise _bad("ignore_paths is not a list")
    ignore_paths = tuple(sorted({_path(p, "an ignored path") for p in ignored}))
    resources = _parse_resources(predicate.get("resources"), hash_type)
    if digest != _subject_digest(resources):
        raise _bad("the subject digest does not match the resources (manifest inconsistent)")
    if len({r.path for r in resources}) != len(resources):
        raise _bad("a resource is listed twice")
    return _text(subject["name"], "the subject name"), resources, hash_type, ignore_paths


def verify_model_signature(data: bytes, *, trust: OpenSSFTrust) -> VerifiedSignature:
    """Check a `model.sig`: its structure, its signature under `trust`, its statement.

    IntegrityError when anything is malformed or does not verify. The files are not looked at:
    compare `resources` with the recorded digests (`check_resources`).
    """
    envelope = _parse_bundle(data)
    if envelope.kind == "key":
        identity, issuer = _verify_key(envelope, trust)
    elif envelope.kind == "certificate":
        identity, issuer = _verify_certificate(envelope, trust)
    else:
        identity, issuer = _verify_sigstore(data, envelope, trust)
    name, resources, hash_type, ignore_paths = _parse_statement(envelope.payload)
    return VerifiedSignature(
        kind=envelope.kind,
        identity=identity,
        issuer=issuer,
        model_name=name,
        resources={r.path: r for r in resources},
        hash_type=hash_type,
        ignore_paths=ignore_paths,
        bundle_digest=hash_bytes(data),
    )


def check_resources(
    verified: VerifiedSignature, expected: Mapping[str, Resource | Mapping[str, str]]
) -> tuple[str, ...]:
    """Match the signed files with the pushed ones: `expected` maps each pushed path to a
    Resource or to {algorithm: hex digest} (e.g. sha256 and blake3).

    IntegrityError naming every path signed with another digest, pushed but not signed, or
    signed but not pushed. Returns the pushed paths the signature lets through unsigned (under
    its ignore_paths, model.sig itself excepted), for the caller to show or refuse.
    """
    problems: list[str] = []
    let_through: list[str] = []
    for path in sorted(expected, key=_sort_key):
        value = expected[path]
        if isinstance(value, Resource):
            if value.path != path:
                raise InvalidInputError(f"expected[{path!r}] is a resource of {value.path!r}")
            digests = {value.algorithm: value.digest}
        else:
            digests = {alg: hexdigest.lower() for alg, hexdigest in value.items()}
        signed = verified.resources.get(path)
        if signed is None:
            if path == SIGNATURE_NAME:
                continue
            if any(_under(path, g) for g in verified.ignore_paths):
                let_through.append(path)
            else:
                problems.append(f"{path}: pushed but not signed")
        elif signed.algorithm not in digests:
            problems.append(f"{path}: signed with {signed.algorithm}, none recorded to compare")
        elif digests[signed.algorithm] != signed.digest:
            problems.append(
                f"{path}: signed {signed.algorithm} {signed.digest[:16]}…, "
                f"pushed {digests[signed.algorithm][:16]}…"
            )
    for path in sorted(verified.resources.keys() - expected.keys(), key=_sort_key):
        problems.append(f"{path}: signed but not pushed")
    if problems:
        raise IntegrityError(
            f"model.sig does not match the files: {'; '.join(problems)}",
            hint="push exactly the files that were signed, or sign the files you push",
            path=problems[0].split(": ", 1)[0],
        )
    return tuple(let_through)
