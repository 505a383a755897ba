"""Settings: the registry home, its `config.toml`, and `MODEL_REGISTRY_*` environment overrides.

Parsed once into a frozen `Settings`. The home (`MODEL_REGISTRY_HOME`, default
`~/.model-registry`) holds `config.toml`, the SQLite catalog, the `store/` directory of the local
driver and, apart from it, `keys/` (mode 0700) with the key-encryption key, the naming key and the
signing key. Relative paths in the file are relative to the home.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import socket
import tomllib
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.crypto.signing import TrustedSigner, parse_public_key
from registry.digest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from registry.errors import ConfigurationError, InvalidInputError, RegistryError
from registry.storage.deadline import DeadlineSettings
from registry.storage.factory import (
    StoreSpec,
    parse_store,
    store_config_lines,
    store_from_config,
    store_lines,
)

CONFIG_FILE = "config.toml"
ENV_HOME = "MODEL_REGISTRY_HOME"
ENV_CATALOG_URL = "MODEL_REGISTRY_CATALOG_URL"
ENV_ACTOR = "MODEL_REGISTRY_ACTOR"
ENV_SHARED_STATE = "MODEL_REGISTRY_SHARED_STATE"
# Where `[api] shared_state` may keep the fleet's limits and signal windows.
SHARED_STATES = ("memory", "catalog")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# A client's (RemoteRegistry's) HTTP cache: object URLs read through it, keys from the server.
ENV_CACHE_URL = "MODEL_REGISTRY_CACHE_URL"
DEFAULT_CHUNK_SIZE = 1024 * 1024
PRIMARY = "primary"
_REGION_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_REGION_OPTIONS = {"name", "priority", "kms", "kms_region", "kms_endpoint"}
_REGION_KEYS = {
    "name",
    "priority",
    "kms_key",
    "kms_region",
    "kms_endpoint_url",
    "kms_profile",
    "kms_previous_keys",
}


# The top-level keys and tables of config.toml: anything else is a typo, not a setting.
_TOP_LEVEL = {
    "registry_id",
    "workers",
    "catalog",
    "store",
    "keys",
    "trusted_signers",
    "webhooks",
    "api",
    "deadlines",
    "openssf",
}


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


def client_cache_url() -> str | None:
    """The cache a registry client reads ciphertext through (MODEL_REGISTRY_CACHE_URL: an
    http(s) URL in front of the server's `/v1/objects/`), or None to read from the server."""
    value = os.environ.get(ENV_CACHE_URL, "").strip()
    if not value:
        return None
    if (
        not value.startswith(("http://", "https://"))
        or urllib.parse.urlsplit(value).hostname is None
    ):
        raise ConfigurationError(
            f"invalid {ENV_CACHE_URL} {value!r}",
            hint=f"{ENV_CACHE_URL}=http://cache-host:port (the cache in front of the server)",
        )
    return value.rstrip("/")


@dataclass(frozen=True)
class KmsSettings:
    """An AWS KMS key that wraps the data keys instead of the local key file."""

    key: str
    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    # Keys being rotated away from (`keys rotate`): they unwrap, never wrap.
    previous: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" via {self.endpoint_url}" if self.endpoint_url else ""
        return f"AWS KMS key {self.key} ({self.region}{where})"


@dataclass(frozen=True)
class RegionSettings:
    """One copy of the store: where it lives, how it is locked, which key wraps its data keys
    (its own KMS key, else the local key file) and its read preference (lower first)."""

    name: str
    store: StoreSpec
    priority: int = 0
    kms: KmsSettings | None = None

    def __post_init__(self) -> None:
        validate_region_name(self.name)

    def describe(self) -> str:
        keys = self.kms.describe() if self.kms else "local key file"
        return f"{self.name}: {self.store.describe()}; {keys}"


def validate_region_name(name: str) -> str:
    if not isinstance(name, str) or not _REGION_NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid region name {name!r}", hint="use 1-32 of a-z 0-9 -, starting alphanumeric"
        )
    return name


@dataclass(frozen=True)
class Webhook:
    """A receiver of alias-move events: its URL and the file holding its HMAC secret."""

    url: str
    secret_file: Path

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInputError(
                f"invalid webhook URL {self.url!r}", hint="use http(s)://HOST[:PORT]/PATH"
            )


MIN_UPLOAD_PART = 1024 * 1024
MAX_UPLOAD_PART = 64 * 1024 * 1024


@dataclass(frozen=True)
class ApiSettings:
    """The REST server's limits and threat-signal thresholds (`[api]` in config.toml; what each
    guards against is in docs/security.md). Server processes that share `shared_state` enforce
    one limit and raise each signal once across them (docs/operations.md, "Limits and signals
    across processes")."""

    requests_per_second: float = 50.0  # per token, a token bucket of `burst`
    burst: int = 200
    key_requests_per_second: float = 5.0  # key broker calls per token, on top of the above
    key_burst: int = 50
    transfer_requests_per_second: float = 1000.0  # ciphertext ranges and upload parts per token
    transfer_burst: int = 4000
    signal_window_seconds: float = 300.0
    signal_distinct_models: int = 20  # distinct models one token reads within the window
    signal_refusals: int = 20  # 401/403 answers to one client address within the window
    signal_unwraps: int = 500  # data keys one token unwraps within the window, at least...
    signal_unwrap_factor: float = 10.0  # ...and this many times its usual (baseline) window
    part_size: int = 16 * 1024 * 1024  # bytes a client uploads per request
    upload_ttl_hours: float = 24.0  # an idle upload session is discarded after this
    staging_dir: Path | None = None  # upload sessions (default: HOME/uploads)
    # Bytes one token's open upload sessions may stage together (every file's sealed size: what
    # their parts take in the staging folder); 0: no limit but the folder's free room.
    staging_bytes_per_token: int = 0
    journal_interval_seconds: float = 10.0  # how often the server copies the journal out
    # Peers (addresses or CIDRs) whose X-Forwarded-For is believed: the reverse proxies in
    # front of the server. None by default: anyone could name any address in that header.
    trusted_proxies: tuple[str, ...] = ()
    # Web UI sessions: signed out after this long whatever happens, or this long unused.
    ui_session_hours: float = 12.0
    ui_idle_minutes: float = 30.0
    # Where the limits' and signals' counts are shared by the server processes: "memory" (each
    # process alone), "catalog" (the catalog's database) or a Redis URL. Empty: "catalog" for a
    # catalog on PostgreSQL (a fleet is right without more), "memory" otherwise.
    shared_state: str = ""
    shared_sync_seconds: float = 0.5  # how often a process swaps its counts with the others'

    def __post_init__(self) -> None:
        _check_shared_state(self.shared_state, "api.shared_state")
        if (
            isinstance(self.shared_sync_seconds, bool)
            or not isinstance(self.shared_sync_seconds, int | float)
            or not 0.05 <= self.shared_sync_seconds <= 10
        ):
            raise InvalidInputError(
                f"api.shared_sync_seconds must be from 0.05 to 10, not {self.shared_sync_seconds!r}"
            )
        if isinstance(self.trusted_proxies, str) or not isinstance(
            self.trusted_proxies, list | tuple
        ):
            raise InvalidInputError(
                "api.trusted_proxies must be a list of addresses or CIDRs",
                hint='e.g. trusted_proxies = ["10.0.0.0/8", "::1"]',
            )
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"api.trusted_proxies: {entry!r} is not an address or CIDR",
                    hint='e.g. trusted_proxies = ["10.0.0.0/8", "::1"]',
                ) from None
        positive = {
            "requests_per_second": self.requests_per_second,
            "burst": self.burst,
            "key_requests_per_second": self.key_requests_per_second,
            "key_burst": self.key_burst,
            "transfer_requests_per_second": self.transfer_requests_per_second,
            "transfer_burst": self.transfer_burst,
            "signal_window_seconds": self.signal_window_seconds,
            "signal_distinct_models": self.signal_distinct_models,
            "signal_refusals": self.signal_refusals,
            "signal_unwraps": self.signal_unwraps,
            "signal_unwrap_factor": self.signal_unwrap_factor,
            "upload_ttl_hours": self.upload_ttl_hours,
            "journal_interval_seconds": self.journal_interval_seconds,
            "ui_session_hours": self.ui_session_hours,
            "ui_idle_minutes": self.ui_idle_minutes,
        }
        for key, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidInputError(f"api.{key} must be a positive number, not {value!r}")
        for key in (
            "burst",
            "key_burst",
            "transfer_burst",
            "signal_distinct_models",
            "signal_refusals",
            "signal_unwraps",
        ):
            if not isinstance(getattr(self, key), int):
                raise InvalidInputError(f"api.{key} must be a whole number")
        if min(self.burst, self.key_burst, self.transfer_burst) < 1:
            raise InvalidInputError("api.burst, key_burst and transfer_burst must be at least 1")
        if (
            isinstance(self.staging_bytes_per_token, bool)
            or not isinstance(self.staging_bytes_per_token, int)
            or self.staging_bytes_per_token < 0
        ):
            raise InvalidInputError(
                "api.staging_bytes_per_token must be a whole number of bytes, 0 for no limit, "
                f"not {self.staging_bytes_per_token!r}"
            )
        if (
            isinstance(self.part_size, bool)
            or not isinstance(self.part_size, int)
            or not MIN_UPLOAD_PART <= self.part_size <= MAX_UPLOAD_PART
            or self.part_size % MIN_UPLOAD_PART
        ):
            raise InvalidInputError(
                f"api.part_size must be a whole number of MiB from {MIN_UPLOAD_PART >> 20} to "
                f"{MAX_UPLOAD_PART >> 20} MiB (in bytes), not {self.part_size!r}"
            )

    @classmethod
    def from_config(cls, home: Path, section: object) -> ApiSettings:
        if not isinstance(section, dict):
            raise InvalidInputError("[api] must be a table")
        known = {name for name in cls.__dataclass_fields__}
        unknown = set(section) - known
        if unknown:
            raise InvalidInputError(
                f"unknown [api] settings {sorted(unknown)}", hint=f"known: {sorted(known)}"
            )
        values = dict(section)
        if "staging_dir" in values:
            values["staging_dir"] = _path(home, values["staging_dir"], "api.staging_dir")
        return cls(**values)

    def shared_store(self, catalog_url: str) -> str:
        """Where the limits' counts are shared: "memory", "catalog" or a Redis URL (the
        default: the catalog when it is PostgreSQL, every process alone otherwise).
        MODEL_REGISTRY_SHARED_STATE overrides the setting (and is never written back)."""
        chosen = os.environ.get(ENV_SHARED_STATE) or self.shared_state
        if chosen:
            return _check_shared_state(chosen, ENV_SHARED_STATE)
        return "catalog" if catalog_url.startswith("postgresql") else "memory"

    def config_lines(self) -> list[str]:
        """The `[api]` section, with only what differs from the defaults (empty if nothing)."""
        default = ApiSettings()
        lines = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value == getattr(default, name):
                continue
            if isinstance(value, Path):
                text = _toml_string(str(value))
            elif isinstance(value, tuple):
                text = "[" + ", ".join(_toml_string(str(item)) for item in value) + "]"
            else:
                text = repr(value)
            lines.append(f"{name} = {text}")
        return ["", "[api]", *lines] if lines else []


def _check_shared_state(value: object, name: str) -> str:
    if not isinstance(value, str) or not (
        value in ("", *SHARED_STATES) or value.startswith(_REDIS_SCHEMES)
    ):
        raise InvalidInputError(
            f"{name} must be memory, catalog or a Redis URL, not {value!r}",
            hint='e.g. shared_state = "redis://127.0.0.1:6379/0"',
        )
    return value


@dataclass(frozen=True)
class OpenSSFSettings:
    """OpenSSF model signatures (`[openssf]`, docs/provenance.md): the key the registry signs
    model.sig with (an ECDSA key file, made on first use, or an AWS KMS asymmetric key), and
    whose signatures a push accepts (public keys, CA roots for certificates, a Sigstore trust
    root with the identities it must name)."""

    key_file: Path | None = None  # None: HOME/keys/openssf.pem
    kms_key: str | None = None
    kms_region: str | None = None
    kms_endpoint_url: str | None = None
    trusted_keys: tuple[Path, ...] = ()
    trusted_ca: tuple[Path, ...] = ()
    sigstore_trust_config: Path | None = None
    # (identity, issuer) pairs: a Sigstore signature must name one of them.
    sigstore_identities: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, home: Path, section: object) -> OpenSSFSettings:
        if not isinstance(section, dict):
            raise InvalidInputError("[openssf] must be a table")
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise InvalidInputError(
                f"unknown [openssf] settings {sorted(unknown)}", hint=f"known: {sorted(known)}"
            )
        values: dict[str, Any] = dict(section)
        for key in ("key_file", "sigstore_trust_config"):
            if values.get(key) is not None:
                values[key] = _path(home, values[key], f"openssf.{key}")
        for key in ("trusted_keys", "trusted_ca"):
            values[key] = tuple(
                _path(home, item, f"openssf.{key}")
                for item in _strings(values.get(key, []), f"openssf.{key}")
            )
        identities = values.get("sigstore_identities", [])
        if not isinstance(identities, list) or not all(
            isinstance(i, dict) and set(i) == {"identity", "issuer"} for i in identities
        ):
            raise InvalidInputError(
                "openssf.sigstore_identities is a list of {identity, issuer} tables",
                hint='e.g. [{identity = "ci@acme.iam", issuer = "https://accounts.google.com"}]',
            )
        values["sigstore_identities"] = tuple(
            (str(i["identity"]), str(i["issuer"])) for i in identities
        )
        for key in ("kms_key", "kms_region", "kms_endpoint_url"):
            if key in values and not isinstance(values[key], str):
                raise InvalidInputError(f"openssf.{key} must be text")
        return cls(**values)

    def signing_key_file(self, home: Path) -> Path:
        return self.key_file or home / "keys" / "openssf.pem"

    def config_lines(self) -> list[str]:
        """The `[openssf]` section, with only what differs from the defaults."""
        lines = []
        for name in (
            "key_file",
            "kms_key",
            "kms_region",
            "kms_endpoint_url",
            "sigstore_trust_config",
        ):
            value = getattr(self, name)
            if value is not None:
                lines.append(f"{name} = {_toml_string(str(value))}")
        for name in ("trusted_keys", "trusted_ca"):
            values = getattr(self, name)
            if values:
                lines.append(f"{name} = [{', '.join(_toml_string(str(v)) for v in values)}]")
        if self.sigstore_identities:
            tables = ", ".join(
                f"{{identity = {_toml_string(i)}, issuer = {_toml_string(o)}}}"
                for i, o in self.sigstore_identities
            )
            lines.append(f"sigstore_identities = [{tables}]")
        return ["", "[openssf]", *lines] if lines else []


@dataclass(frozen=True)
class Settings:
    home: Path
    registry_id: str
    catalog_url: str
    regions: tuple[RegionSettings, ...]
    chunk_size: int
    kek_file: Path | None
    naming_key_file: Path
    signing_key_file: Path
    trusted_signers: tuple[TrustedSigner, ...] = field(default=())
    workers: int = 0
    write_quorum: int | None = None
    webhooks: tuple[Webhook, ...] = field(default=())
    api: ApiSettings = field(default_factory=ApiSettings)
    deadlines: DeadlineSettings = field(default_factory=DeadlineSettings)
    openssf: OpenSSFSettings = field(default_factory=OpenSSFSettings)
    # Key files being rotated away from (`keys rotate`): they unwrap, never wrap.
    previous_kek_files: tuple[Path, ...] = field(default=())

    def __post_init__(self) -> None:
        check_regions(self.regions, write_quorum=self.write_quorum)
        if self.kek_file is None and any(region.kms is None for region in self.regions):
            raise ConfigurationError("a region without a KMS key needs keys.kek_file")

    @property
    def store(self) -> StoreSpec:
        """The preferred region's store."""
        return self.regions[0].store

    @property
    def kms(self) -> KmsSettings | None:
        """The preferred region's KMS key (None: the local key file)."""
        return self.regions[0].kms

    def describe_keys(self) -> str:
        described = {
            r.kms.describe() if r.kms else f"local key file {self.kek_file}" for r in self.regions
        }
        return "; ".join(sorted(described))

    @property
    def store_path(self) -> Path | None:
        """The preferred region's local directory (None for an S3 store)."""
        return self.store.path

    @property
    def effective_workers(self) -> int:
        return self.workers or max(2, min(8, os.cpu_count() or 2))


def check_regions(regions: tuple[RegionSettings, ...], *, write_quorum: int | None) -> None:
    """Regions have distinct names and stores; a write quorum lies within 1..len(regions)."""
    if not regions:
        raise ConfigurationError("a registry needs at least one store")
    names = [region.name for region in regions]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"region names must be distinct, not {names}")
    places = [region.store.describe() for region in regions]
    if len(set(places)) != len(places):
        raise InvalidInputError("two regions name the same store", hint="each region needs its own")
    if write_quorum is not None and not 1 <= write_quorum <= len(regions):
        raise InvalidInputError(
            f"write quorum {write_quorum} is not between 1 and {len(regions)} (the regions)"
        )


def parse_region(text: str, *, index: int = 0, count: int = 1) -> RegionSettings:
    """A region from an `init --store` value: a directory or an s3:// URL, whose query may also
    carry name=, priority=, kms= (a KMS key id or ARN), kms_region= and kms_endpoint=."""
    options: dict[str, str] = {}
    store_text = text
    if text.startswith("s3://"):
        url = urllib.parse.urlsplit(text)
        try:
            pairs = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        except ValueError:
            pairs = []
        options = {k: v for k, v in pairs if k in _REGION_OPTIONS}
        rest = [(k, v) for k, v in pairs if k not in _REGION_OPTIONS]
        if any(not value for value in options.values()):
            raise InvalidInputError(f"invalid store URL {text!r}: an empty option")
        store_text = urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(rest)))
    store = parse_store(store_text)
    try:
        priority = int(options.get("priority", index))
    except ValueError:
        raise InvalidInputError("priority must be a whole number") from None
    kms = None
    if "kms" in options:
        kms_region = options.get("kms_region") or (store.s3.region if store.s3 else None)
        if not kms_region:
            raise InvalidInputError(
                f"{text}: kms= needs the key's region", hint="add region= or kms_region="
            )
        kms = KmsSettings(options["kms"], kms_region, options.get("kms_endpoint"))
    elif "kms_region" in options or "kms_endpoint" in options:
        raise InvalidInputError(f"{text}: kms_region= and kms_endpoint= need kms=")
    name = options.get("name") or _default_region_name(store, index=index, count=count)
    return RegionSettings(name, store, priority, kms)


def _default_region_name(store: StoreSpec, *, index: int, count: int) -> str:
    if count == 1:
        return PRIMARY
    if store.s3 is not None and store.s3.region:
        candidate = store.s3.region
    else:
        candidate = f"region-{index + 1}"
    return candidate if _REGION_NAME.fullmatch(candidate) else f"region-{index + 1}"


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
    unknown = set(raw) - _TOP_LEVEL
    if unknown:
        raise ConfigurationError(
            f"{config_path}: unknown settings {sorted(unknown)}",
            hint=f"config.toml takes {', '.join(sorted(_TOP_LEVEL))} (docs/operations.md)",
        )
    try:
        catalog = raw.get("catalog", {})
        store = raw.get("store", {})
        keys = raw.get("keys", {})
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
        if not 0 <= workers <= 64:
            raise ConfigurationError(f"{config_path}: workers must be 0 (automatic) to 64")
        provider = keys.get("provider", "local")
        if provider not in ("local", "aws-kms"):
            raise ConfigurationError(f"{config_path}: keys.provider must be local or aws-kms")
        try:
            regions = _regions(home, store, keys, provider)
            quorum = store.get("write_quorum")
            settings = Settings(
                home=home,
                registry_id=str(raw["registry_id"]),
                catalog_url=os.environ.get(ENV_CATALOG_URL) or str(catalog["url"]),
                regions=regions,
                chunk_size=chunk_size,
                kek_file=(
                    _path(home, keys.get("kek_file"), "keys.kek_file")
                    if keys.get("kek_file") or any(r.kms is None for r in regions)
                    else None
                ),
                naming_key_file=_path(home, keys.get("naming_key_file"), "keys.naming_key_file"),
                signing_key_file=_path(home, keys.get("signing_key_file"), "keys.signing_key_file"),
                trusted_signers=tuple(signers),
                workers=workers,
                write_quorum=None if quorum is None else int(quorum),
                webhooks=tuple(
                    Webhook(str(entry["url"]), _path(home, entry.get("secret_file"), "secret_file"))
                    for entry in raw.get("webhooks", [])
                ),
                api=ApiSettings.from_config(home, raw.get("api", {})),
                deadlines=DeadlineSettings.from_config(raw.get("deadlines", {})),
                openssf=OpenSSFSettings.from_config(home, raw.get("openssf", {})),
                previous_kek_files=tuple(
                    _path(home, value, "keys.previous_kek_files")
                    for value in _strings(keys.get("previous_kek_files", []), "previous_kek_files")
                ),
            )
        except InvalidInputError as error:
            raise ConfigurationError(f"{config_path}: {error}", hint=error.hint) from None
        return settings
    except RegistryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ConfigurationError(f"{config_path}: missing or invalid setting {error}") from None


def _regions(
    home: Path, store: dict[str, Any], keys: dict[str, Any], provider: str
) -> tuple[RegionSettings, ...]:
    """The regions of a `[store]` section: one (the section itself) or `[[store.regions]]`."""

    def resolve(value: object) -> Path:
        return _path(home, value, "store.path")

    if "regions" not in store:
        # One store: the [store] section is the region, keys.provider says how keys are kept.
        section = {k: v for k, v in store.items() if k not in ("write_quorum",)}
        kms = None
        if provider == "aws-kms":
            if not keys.get("kms_key") or not keys.get("kms_region"):
                raise ConfigurationError("aws-kms needs keys.kms_key and kms_region")
            kms = KmsSettings(
                str(keys["kms_key"]),
                str(keys["kms_region"]),
                keys.get("kms_endpoint_url"),
                keys.get("kms_profile"),
                _strings(keys.get("kms_previous_keys", []), "kms_previous_keys"),
            )
        return (RegionSettings(PRIMARY, store_from_config(section, resolve=resolve), 0, kms),)
    extra = set(store) - {"regions", "chunk_size", "write_quorum"}
    if extra:
        raise ConfigurationError(
            f"[store] settings {sorted(extra)} belong in each [[store.regions]] entry"
        )
    regions = []
    for entry in store["regions"]:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigurationError("every [[store.regions]] entry needs a name")
        where = {k: v for k, v in entry.items() if k not in _REGION_KEYS}
        spec = store_from_config(where, resolve=resolve)
        kms = None
        if entry.get("kms_key"):
            kms_region = entry.get("kms_region") or (spec.s3.region if spec.s3 else None)
            if not kms_region:
                raise ConfigurationError(
                    f"region {entry['name']}: kms_key needs kms_region (or the store's region)"
                )
            kms = KmsSettings(
                str(entry["kms_key"]),
                str(kms_region),
                entry.get("kms_endpoint_url"),
                entry.get("kms_profile") or (spec.s3.profile if spec.s3 else None),
                _strings(entry.get("kms_previous_keys", []), "kms_previous_keys"),
            )
        regions.append(RegionSettings(str(entry["name"]), spec, int(entry.get("priority", 0)), kms))
    # A stable order: by priority, then as listed.
    return tuple(sorted(regions, key=lambda region: region.priority))


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigurationError(f"keys.{key} must be a list of strings")
    return tuple(value)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(
    *,
    registry_id: str,
    catalog_url: str,
    regions: tuple[RegionSettings, ...],
    kek_file: str | None,
    naming_key_file: str,
    signing_key_file: str,
    trusted_signers: list[tuple[str, str]],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 0,
    write_quorum: int | None = None,
    webhooks: tuple[Webhook, ...] = (),
    api: ApiSettings | None = None,
    deadlines: DeadlineSettings | None = None,
    previous_kek_files: Sequence[str] = (),
    openssf: OpenSSFSettings | None = None,
) -> str:
    """The text of config.toml (written by `init`, `keys trust` and `keys rotate`)."""
    single = len(regions) == 1 and regions[0].name == PRIMARY and write_quorum is None
    if single:
        store = store_config_lines(regions[0].store, chunk_size=chunk_size)
        keys = _key_lines(kek_file, regions[0].kms)
    else:
        store = ["[store]", f"chunk_size = {chunk_size}"]
        if write_quorum is not None:
            store.append(f"write_quorum = {write_quorum}")
        for region in regions:
            store += [
                "",
                "[[store.regions]]",
                f"name = {_toml_string(region.name)}",
                f"priority = {region.priority}",
                *store_lines(region.store),
                *_region_kms_lines(region.kms),
            ]
        keys = [] if kek_file is None else [f"kek_file = {_toml_string(kek_file)}"]
    lines = [
        "# model-registry configuration (docs/operations.md explains every setting)",
        f"registry_id = {_toml_string(registry_id)}",
        *([f"workers = {workers}"] if workers else []),
        "",
        "[catalog]",
        f"url = {_toml_string(catalog_url)}",
        "",
        *store,
        "",
        "# Keys live outside the store and the catalog; back them up separately.",
        "[keys]",
        *keys,
        *(
            [f"previous_kek_files = [{', '.join(map(_toml_string, previous_kek_files))}]"]
            if previous_kek_files
            else []
        ),
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
    for hook in webhooks:
        lines += [
            "",
            "[[webhooks]]",
            f"url = {_toml_string(hook.url)}",
            f"secret_file = {_toml_string(str(hook.secret_file))}",
        ]
    if api is not None:
        lines += api.config_lines()
    if deadlines is not None:
        lines += deadlines.config_lines()
    if openssf is not None:
        lines += openssf.config_lines()
    return "\n".join(lines) + "\n"


def _region_kms_lines(kms: KmsSettings | None) -> list[str]:
    if kms is None:
        return []
    lines = [f"kms_key = {_toml_string(kms.key)}", f"kms_region = {_toml_string(kms.region)}"]
    if kms.endpoint_url:
        lines.append(f"kms_endpoint_url = {_toml_string(kms.endpoint_url)}")
    if kms.profile:
        lines.append(f"kms_profile = {_toml_string(kms.profile)}")
    if kms.previous:
        lines.append(f"kms_previous_keys = [{', '.join(map(_toml_string, kms.previous))}]")
    return lines


def _key_lines(kek_file: str | None, kms: KmsSettings | None) -> list[str]:
    if kms is None:
        if kek_file is None:
            raise ConfigurationError("a registry needs a key file or a KMS key")
        return ['provider = "local"', f"kek_file = {_toml_string(kek_file)}"]
    return ['provider = "aws-kms"', *_region_kms_lines(kms)]


def raw_config(home: Path) -> dict[str, Any]:
    """The parsed config.toml, for commands that rewrite it (keys trust)."""
    return tomllib.loads((home / CONFIG_FILE).read_text())


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (mode 0600) so that a crash leaves the old file or the new one,
    never a part of either."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
