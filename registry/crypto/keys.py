"""Key providers: wrap and unwrap per-blob data keys with a key-encryption key (envelopes).

A `KeyProvider` never sees plaintext data, only 32-byte data keys, and binds every wrapped key to an
encryption context (registry id, purpose, content digest) so a key slot cannot be moved to another
blob. The local provider keeps its key-encryption key (KEK) in a file with mode 0600 that lives
apart from the store and the catalog; the AWS KMS provider comes with the S3 stores.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from registry.errors import IntegrityError, KeyAccessError

DATA_KEY_SIZE = 32
SLOT_FORMAT = "model-registry/key-slot/v1"


def context_bytes(context: Mapping[str, str]) -> bytes:
    """Canonical encoding of an encryption context (sorted keys, compact JSON, UTF-8)."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by one key-encryption key: a key slot."""

    provider: str
    kek_id: str
    ciphertext: bytes

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": SLOT_FORMAT,
                "provider": self.provider,
                "kek_id": self.kek_id,
                "wrapped": base64.b64encode(self.ciphertext).decode(),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, *, what: str) -> WrappedKey:
        try:
            raw = json.loads(data)
            if raw.get("format") != SLOT_FORMAT:
                raise ValueError("unknown key slot format")
            return cls(
                str(raw["provider"]),
                str(raw["kek_id"]),
                base64.b64decode(raw["wrapped"], validate=True),
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as error:
            raise IntegrityError(f"{what}: malformed key slot ({error})", path=what) from None


class KeyProvider(ABC):
    """Wraps and unwraps data keys under one key-encryption key."""

    name: str
    kek_id: str
    # Each wrap or unwrap is a request over a network (a KMS), worth overlapping with others; a
    # key file's are a few microseconds of CPU.
    latency_bound = False

    @abstractmethod
    def wrap(self, data_key: bytes, *, context: Mapping[str, str]) -> WrappedKey:
        """Wrap `data_key`, binding it to `context`."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str], what: str) -> bytes:
        """Return the data key; `KeyAccessError` when this provider's key cannot open it,
        `IntegrityError` when the slot or its context was tampered with. `what` names the file."""

    def generate(self, *, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        """A fresh random data key and its wrapped form."""
        data_key = os.urandom(DATA_KEY_SIZE)
        return data_key, self.wrap(data_key, context=context)

    @property
    def kek_ids(self) -> tuple[str, ...]:
        """Every key-encryption key this provider unwraps with, the one it wraps with first."""
        return (self.kek_id,)


class KeyRing(KeyProvider):
    """A key being rotated to and the keys it replaces: the current key wraps; a slot of any of
    them unwraps, each by its own key (`keys rotate`)."""

    def __init__(self, current: KeyProvider, previous: Sequence[KeyProvider]) -> None:
        self.current = current
        self.previous = tuple(previous)
        self.name = current.name
        self.kek_id = current.kek_id
        self.latency_bound = current.latency_bound  # the current key wraps

    @property
    def kek_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.kek_id for p in (self.current, *self.previous)))

    def wrap(self, data_key: bytes, *, context: Mapping[str, str]) -> WrappedKey:
        return self.current.wrap(data_key, context=context)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str], what: str) -> bytes:
        for provider in self.previous:
            if provider.kek_id == wrapped.kek_id and provider.name == wrapped.provider:
                return provider.unwrap(wrapped, context=context, what=what)
        return self.current.unwrap(wrapped, context=context, what=what)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create `path` (mode 0600, O_EXCL so an existing secret is never clobbered) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key_file(path: Path, *, label: str = "key-encryption key") -> None:
    """Write a new random 256-bit key to `path`, mode 0600; never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    header = f"# model-registry {label} v1: keep it secret, back it up apart from the store"
    write_secret_file(path, f"{header}\n{base64.b64encode(os.urandom(32)).decode()}\n".encode())


def read_key_file(path: Path, *, label: str = "key-encryption key") -> bytes:
    """The 32-byte key in a file written by `create_key_file`; KeyAccessError with a hint."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise KeyAccessError(
            f"{label} file {path} does not exist",
            hint="restore it from your backup (what it protects cannot be read without it), or "
            "fix the path in config.toml; a new registry: model-registry init",
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyAccessError(f"cannot read {label} file {path}: {error}") from None
    body = [line for line in lines if line.strip() and not line.startswith("#")]
    try:
        key = base64.b64decode(body[0].strip(), validate=True) if len(body) == 1 else b""
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise KeyAccessError(
            f"{path} is not a model-registry {label} file",
            hint="restore the original key file from your backup",
        )
    return key


class LocalKeyProvider(KeyProvider):
    """AES-256-GCM key wrapping under a KEK read from a local file."""

    name = "local"

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise KeyAccessError("a key-encryption key has 32 bytes")
        self._aead = AESGCM(kek)
        fingerprint = blake3.blake3(kek, derive_key_context="model-registry kek id v1")
        self.kek_id = "local:" + str(fingerprint.hexdigest())[:24]
        # The file it was read from, to tell the keys of a rotation apart (`keys show`).
        self.path: Path | None = None

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyProvider:
        provider = cls(read_key_file(path))
        provider.path = path
        return provider

    def wrap(self, data_key: bytes, *, context: Mapping[str, str]) -> WrappedKey:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, data_key, context_bytes(context))
        return WrappedKey(self.name, self.kek_id, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str], what: str) -> bytes:
        if wrapped.provider != self.name or wrapped.kek_id != self.kek_id:
            raise KeyAccessError(
                f"{what}: its data key is wrapped by {wrapped.kek_id}, but the configured key "
                f"is {self.kek_id} (wrong key file)",
                hint="point keys.kek_file at the key file this registry was created with",
            )
        try:
            data_key = self._aead.decrypt(
                wrapped.ciphertext[:12], wrapped.ciphertext[12:], context_bytes(context)
            )
        except (InvalidTag, ValueError):
            raise IntegrityError(
                f"{what}: key slot failed authentication (tampered or moved from another blob)",
                path=what,
            ) from None
        if len(data_key) != DATA_KEY_SIZE:
            raise IntegrityError(f"{what}: key slot holds a malformed data key", path=what)
        return data_key
