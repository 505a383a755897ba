"""Settings: the registry home, its `config.toml`, and `MODEL_REGISTRY_*` environment overrides.

Parsed once into a frozen `Settings`. The home (`MODEL_REGISTRY_HOME`, default
`~/.model-registry`) holds `config.toml`, the SQLite catalog, the `store/` directory of the local
driver and, apart from it, `keys/` (mode 0700) with the key-encryption key, the naming key and the
signing key. Relative paths in the file are relative to the home.
"""

from __future__ import annotations

import getpass
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.crypto.sealed import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from registry.crypto.signing import TrustedSigner, parse_public_key
from registry.errors import ConfigurationError, InvalidInputError, RegistryError
from registry.storage.factory import StoreSpec, store_config_lines, store_from_config

CONFIG_FILE = "config.toml"
ENV_HOME = "MODEL_REGISTRY_HOME"
ENV_CATALOG_URL = "MODEL_REGISTRY_CATALOG_URL"
ENV_ACTOR = "MODEL_REGISTRY_ACTOR"
DEFAULT_CHUNK_SIZE = 1024 * 1024


def default_home() -> Path:
    value = os.environ.get(ENV_HOME)
    return Path(value).expanduser() if value else Path.home() / ".model-registry"


def default_actor() -> str:
    """Who the audit trail names: MODEL_REGISTRY_ACTOR, else user@host."""
    actor = os.environ.get(ENV_ACTOR)
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class KmsSettings:
    """An AWS KMS key that wraps the data keys instead of the local key file."""

    key: str
    region: str
    endpoint_url: str | None = None
    profile: str | None = None

    def describe(self) -> str:
        where = f" via {self.endpoint_url}" if self.endpoint_url else ""
        return f"AWS KMS key {self.key} ({self.region}{where})"


@dataclass(frozen=True)
class Settings:
    home: Path
    registry_id: str
    catalog_url: str
    store: StoreSpec
    chunk_size: int
    kek_file: Path | None
    naming_key_file: Path
    signing_key_file: Path
    trusted_signers: tuple[TrustedSigner, ...] = field(default=())
    workers: int = 0
    kms: KmsSettings | None = None

    def describe_keys(self) -> str:
        return self.kms.describe() if self.kms else f"local key file {self.kek_file}"

    @property
    def store_path(self) -> Path | None:
        """The local store's directory (None for an S3 store)."""
        return self.store.path

    @property
    def effective_workers(self) -> int:
        return self.workers or max(2, min(8, os.cpu_count() or 2))


def _path(home: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{home / CONFIG_FILE}: {key} must be a non-empty path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path


def load_settings(home: Path | None = None, *, config_file: Path | None = None) -> Settings:
    """Read `home/config.toml` (or `config_file`); ConfigurationError with a hint when missing
    or invalid."""
    home = (home or default_home()).expanduser().absolute()
    config_path = config_file or home / CONFIG_FILE
    try:
        raw: dict[str, Any] = tomllib.loads(config_path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"no registry at {home} ({CONFIG_FILE} not found)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"cannot read {config_path}: {error}") from None
    try:
        catalog = raw.get("catalog", {})
        store = raw.get("store", {})
        keys = raw.get("keys", {})
        try:
            store_spec = store_from_config(
                store, resolve=lambda value: _path(home, value, "store.path")
            )
        except InvalidInputError as error:
            raise ConfigurationError(f"{config_path}: [store]: {error}") from None
        signers = []
        for entry in raw.get("trusted_signers", []):
            try:
                signers.append(
                    TrustedSigner(str(entry["name"]), parse_public_key(entry["public_key"]))
                )
            except InvalidInputError as error:
                raise ConfigurationError(f"{config_path}: trusted signer: {error}") from None
        chunk_size = int(store.get("chunk_size", DEFAULT_CHUNK_SIZE))
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigurationError(
                f"{config_path}: store.chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes"
            )
        workers = int(raw.get("workers", 0))
        provider = keys.get("provider", "local")
        if provider not in ("local", "aws-kms"):
            raise ConfigurationError(f"{config_path}: keys.provider must be local or aws-kms")
        kms = None
        if provider == "aws-kms":
            if not keys.get("kms_key") or not keys.get("kms_region"):
                raise ConfigurationError(
                    f"{config_path}: aws-kms needs keys.kms_key and kms_region"
                )
            kms = KmsSettings(
                str(keys["kms_key"]),
                str(keys["kms_region"]),
                keys.get("kms_endpoint_url"),
                keys.get("kms_profile"),
            )
        if not 0 <= workers <= 64:
            raise ConfigurationError(f"{config_path}: workers must be 0 (automatic) to 64")
        return Settings(
            home=home,
            registry_id=str(raw["registry_id"]),
            catalog_url=os.environ.get(ENV_CATALOG_URL) or str(catalog["url"]),
            store=store_spec,
            chunk_size=chunk_size,
            kek_file=None if kms else _path(home, keys.get("kek_file"), "keys.kek_file"),
            naming_key_file=_path(home, keys.get("naming_key_file"), "keys.naming_key_file"),
            signing_key_file=_path(home, keys.get("signing_key_file"), "keys.signing_key_file"),
            trusted_signers=tuple(signers),
            workers=workers,
            kms=kms,
        )
    except RegistryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigurationError(f"{config_path}: missing or invalid setting {error}") from None


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(
    *,
    registry_id: str,
    catalog_url: str,
    store: StoreSpec,
    kek_file: str | None,
    naming_key_file: str,
    signing_key_file: str,
    trusted_signers: list[tuple[str, str]],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 0,
    kms: KmsSettings | None = None,
) -> str:
    """The text of config.toml (written by `init` and `keys trust`)."""
    lines = [
        "# model-registry configuration (docs/operations.md explains every setting)",
        f"registry_id = {_toml_string(registry_id)}",
        *([f"workers = {workers}"] if workers else []),
        "",
        "[catalog]",
        f"url = {_toml_string(catalog_url)}",
        "",
        *store_config_lines(store, chunk_size=chunk_size),
        "",
        "# Keys live outside the store and the catalog; back them up separately.",
        "[keys]",
        *_key_lines(kek_file, kms),
        f"naming_key_file = {_toml_string(naming_key_file)}",
        f"signing_key_file = {_toml_string(signing_key_file)}",
    ]
    for name, public_key in trusted_signers:
        lines += [
            "",
            "[[trusted_signers]]",
            f"name = {_toml_string(name)}",
            f"public_key = {_toml_string(public_key)}",
        ]
    return "\n".join(lines) + "\n"


def _key_lines(kek_file: str | None, kms: KmsSettings | None) -> list[str]:
    if kms is None:
        if kek_file is None:
            raise ConfigurationError("a registry needs a key file or a KMS key")
        return ['provider = "local"', f"kek_file = {_toml_string(kek_file)}"]
    lines = [
        'provider = "aws-kms"',
        f"kms_key = {_toml_string(kms.key)}",
        f"kms_region = {_toml_string(kms.region)}",
    ]
    if kms.endpoint_url:
        lines.append(f"kms_endpoint_url = {_toml_string(kms.endpoint_url)}")
    if kms.profile:
        lines.append(f"kms_profile = {_toml_string(kms.profile)}")
    return lines


def raw_config(home: Path) -> dict[str, Any]:
    """The parsed config.toml, for commands that rewrite it (keys trust)."""
    return tomllib.loads((home / CONFIG_FILE).read_text())
