"""The one exception hierarchy of model-registry, with the stable code and CLI exit status of each.

Every error a user can meet is a `RegistryError`: it carries a message that says what went wrong,
a `hint` that says what to do next, a stable `code` (used by the CLI's `--json` output and the
REST API's error shape), an `exit_code` for the CLI and an `http_status` for the API. Errors also
subclass the builtin that fits (`LookupError`, `ValueError`, `PermissionError`) so plain Python
callers can catch them.
"""

from __future__ import annotations

# With no good copy anywhere, the files the object came from are the source left: a push of
# the same content rewrites a damaged or missing copy (`write_copies` distrusts bad ones).
REPUSH_HINT = (
    "push the files of the versions it breaks again (`model-registry push NAME PATH` with the "
    "same files rewrites a damaged copy), or restore the object from a backup of the store"
)


class RegistryError(Exception):
    """Base of every error model-registry raises on purpose."""

    code = "registry_error"
    exit_code = 1
    http_status = 500
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return self.message


class InvalidInputError(RegistryError, ValueError):
    """Input refused before anything changed: a bad name, reference, path or option."""

    code = "invalid_input"
    exit_code = 3
    http_status = 400
    default_hint = "check the command's arguments: `model-registry COMMAND --help` lists them"


class DigestMismatchError(InvalidInputError):
    """Bytes received do not hash to the digest sent or declared with them (an upload part, a
    file assembled from its parts): refused like any bad input, and counted as an integrity
    failure by the API."""

    default_hint = "the bytes changed on the way: send them again"


class InvalidReferenceError(InvalidInputError):
    """A model name or version reference that does not follow the grammar."""

    code = "invalid_reference"
    default_hint = (
        "names are lower-case [a-z0-9][a-z0-9._-]* segments, optionally org/name; references are "
        "NAME, NAME@N, NAME@blake3:PREFIX (12+ hex) or NAME:ALIAS"
    )


class InvalidModelError(InvalidInputError):
    """A model directory or file that cannot be pushed (hostile or malformed safetensors, ...)."""

    code = "invalid_model"
    default_hint = (
        "fix or remove the file the message names (safetensors files must be well-formed: "
        "docs/format.md), then push again"
    )


class NotFoundError(RegistryError, LookupError):
    """A model, version, file or object that does not exist."""

    code = "not_found"
    exit_code = 4
    http_status = 404
    default_hint = (
        "`model-registry ls` lists the models, `model-registry ls NAME` a model's versions"
    )


class AmbiguousReferenceError(InvalidInputError):
    """A digest prefix that matches more than one version."""

    code = "ambiguous_reference"
    default_hint = "give more hex digits of the digest"


class ConflictError(RegistryError):
    """The request clashes with the current state (a concurrent push, an existing file)."""

    code = "conflict"
    exit_code = 5
    http_status = 409
    default_hint = "another change got there first: check the state, then run the command again"


class RetentionError(ConflictError):
    """An Object Lock rule refused the change: retention shortened or downgraded, a locked or held
    object deleted, a governance bypass not asked for."""

    code = "retention_refused"
    default_hint = (
        "it can change once the lock or the rule that keeps it has expired or been changed "
        "(`model-registry retention plan NAME` explains)"
    )


class DestinationExistsError(ConflictError):
    """A pull would overwrite files that already exist."""

    code = "destination_exists"
    default_hint = "choose an empty destination or pass --force to overwrite"


class IntegrityError(RegistryError):
    """Stored bytes failed authentication or their digest: tampering or corruption."""

    code = "integrity_error"
    exit_code = 6
    http_status = 502
    default_hint = (
        "the stored object is damaged or was tampered with; nothing was written. "
        "Run `model-registry verify REF --read-data` to list every damaged file"
    )

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class SignatureError(IntegrityError):
    """A manifest without a valid signature by a trusted key."""

    code = "signature_error"
    default_hint = (
        "the manifest is not signed by a trusted key; add the signer's public key with "
        "`model-registry keys trust NAME PUBLIC_KEY` only if you trust it"
    )


class KeyAccessError(RegistryError, PermissionError):
    """A key-encryption key is missing, unreadable or not the one the data was wrapped with."""

    code = "key_access_error"
    exit_code = 7
    http_status = 503
    default_hint = (
        "check the key files (`model-registry keys show` lists them) or the KMS key's permissions"
    )


class KmsUnreachableError(KeyAccessError):
    """KMS in one region did not answer (network, timeout, service unavailable): the caller may
    fall back to another region's key slot."""

    default_hint = (
        "check network access to KMS in this region; a copy in another region opens with that "
        "region's key slot"
    )

    def __init__(self, message: str, *, region: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.region = region


class ConfigurationError(RegistryError):
    """The registry home or its configuration is missing or invalid."""

    code = "configuration_error"
    exit_code = 8
    http_status = 500
    default_hint = "run `model-registry init` (MODEL_REGISTRY_HOME chooses the home)"


class SchemaVersionError(ConfigurationError):
    """The catalog was migrated by a newer model-registry than this one."""

    code = "schema_too_new"
    default_hint = "upgrade model-registry to the release that wrote this catalog"


class StorageError(RegistryError, OSError):
    """A storage driver could not complete an operation (I/O error, unreachable store)."""

    code = "storage_error"
    exit_code = 9
    http_status = 503
    default_hint = (
        "check the stores with `model-registry regions status`, then run the command again"
    )


class StoreTimeoutError(StorageError):
    """A store accepted the request but did not answer within its deadline (a hung region, or
    one far slower than the configured floor): distinct from one that refused or failed."""

    code = "store_timeout"
    default_hint = (
        "the region is hung or far too slow; reads go to other regions meanwhile. Check it with "
        "`model-registry regions status`; [deadlines] in config.toml sets the limits"
    )


class CatalogMissingError(ConfigurationError):
    """The configured catalog database is gone or empty while the home belongs to a registry:
    never replaced silently by an empty one (its history would be lost)."""

    code = "catalog_missing"
    exit_code = 13
    http_status = 503
    default_hint = (
        "prove a region first (`model-registry drill --region REGION`, which reads the stores "
        "alone), then `model-registry catalog rebuild --from REGION`; or restore the database "
        "and check catalog.url in config.toml"
    )


class CatalogMismatchError(ConfigurationError):
    """The catalog belongs to another registry than the home's config.toml names."""

    code = "catalog_mismatch"
    exit_code = 14
    http_status = 503
    default_hint = (
        "each registry needs its own catalog: check catalog.url in config.toml (or "
        "MODEL_REGISTRY_CATALOG_URL)"
    )


class CatalogBehindError(ConfigurationError):
    """The stores' journal holds changes the catalog lacks: it was restored from a backup (or
    another catalog writes this registry's stores). Refused before anything is written."""

    code = "catalog_behind"
    exit_code = 15
    http_status = 503
    default_hint = (
        "to recover every change the stores hold, move the catalog aside and run "
        "`model-registry catalog rebuild --from REGION`; to keep this catalog and drop the "
        "later changes, `model-registry catalog journal --new-epoch` (admin)"
    )


class PolicyError(RegistryError):
    """A signer policy refused an alias move: the version lacks an OpenSSF signature by one of
    the signers the policy of that alias requires (`model-registry policy`)."""

    code = "policy_refused"
    exit_code = 17
    http_status = 409
    default_hint = "`model-registry policy show NAME` lists who must have signed"


class PermissionDeniedError(RegistryError, PermissionError):
    """The caller's role does not allow the change (moving a protected alias, deleting)."""

    code = "permission_denied"
    exit_code = 10
    http_status = 403
    default_hint = "ask for a role that allows it (docs/security.md lists what each role may do)"


class UnauthenticatedError(RegistryError, PermissionError):
    """No usable API token: missing, malformed, unknown, expired or revoked."""

    code = "unauthenticated"
    exit_code = 11
    http_status = 401
    default_hint = (
        "set MODEL_REGISTRY_TOKEN (or --token) to a live token (`model-registry token list` "
        "on the server)"
    )


class RateLimitedError(RegistryError):
    """Too many requests for this token; `retry_after` says when to try again (seconds)."""

    code = "rate_limited"
    exit_code = 12
    http_status = 429
    default_hint = "wait as long as the message says, then run the command again"

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class QuotaExceededError(RegistryError):
    """A push through the API would hold more of the server's staging folder than its token is
    allowed (`[api] staging_bytes_per_token`); nothing was opened."""

    code = "quota_exceeded"
    exit_code = 18
    http_status = 413
    default_hint = (
        "commit or abandon the token's other pushes (an idle one ends after [api] "
        "upload_ttl_hours), or ask the operator to raise [api] staging_bytes_per_token"
    )


class NotConfirmedError(RegistryError):
    """A command that asks before it changes something was not told yes: the answer was no,
    or there was no terminal to ask on. Nothing was changed."""

    code = "not_confirmed"
    exit_code = 16
    http_status = 400
    default_hint = "pass --yes to run it without the question"


class ObjectExistsError(StorageError):
    """A write-once object already exists (raised only where absence was required)."""

    code = "object_exists"


# Documented in docs/cli.md; the CLI exits with these.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug: please report it)",
    2: "usage error (unknown option, missing argument)",
    InvalidInputError.exit_code: "invalid input: bad name, reference, path or model files",
    NotFoundError.exit_code: "not found: model, version or object",
    ConflictError.exit_code: "conflict: destination exists, concurrent change",
    IntegrityError.exit_code: "integrity failure: tampered or corrupt data, bad signature",
    KeyAccessError.exit_code: "key access: key file missing, unreadable or wrong",
    ConfigurationError.exit_code: "configuration: registry not initialised, schema too new",
    StorageError.exit_code: "storage: the store could not be read or written",
    PermissionDeniedError.exit_code: "permission denied: the role does not allow the change",
    UnauthenticatedError.exit_code: "unauthenticated: the API token is missing, wrong, expired "
    "or revoked",
    RateLimitedError.exit_code: "rate limited: too many requests for this token; retry later",
    CatalogMissingError.exit_code: "catalog missing: the catalog database is gone or empty; "
    "rebuild it from a region",
    CatalogMismatchError.exit_code: "catalog mismatch: the catalog belongs to another registry",
    CatalogBehindError.exit_code: "catalog behind: the stores hold changes the catalog lacks "
    "(restored from a backup)",
    NotConfirmedError.exit_code: "not confirmed: the question before a change was not answered "
    "yes; nothing was changed",
}
