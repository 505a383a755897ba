"""AWS KMS key provider: wraps and unwraps data keys with one KMS key in one region.

A registry spread over regions configures one `KmsKeyProvider` per region and stores one key slot
per region for every data key, so each region opens its own copies with its own KMS while another
region's KMS is unreachable. Every call binds the encryption context (registry id, purpose, content
digest) and pins the key ARN, so a slot cannot be moved to another blob or opened with another key.
Every refusal surfaces as a `KeyAccessError` that names the object, the key and the reason;
`KmsUnreachableError` marks the ones where trying another region's slot makes sense.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from registry.crypto.keys import DATA_KEY_SIZE, KeyProvider, WrappedKey
from registry.errors import (
    ConfigurationError,
    IntegrityError,
    KeyAccessError,
    KmsUnreachableError,
)

PROVIDER = "aws-kms"
# Short enough that a key disabled in an incident stops being used within half a minute, long
# enough that a push of thousands of blobs does not pay a DescribeKey per blob.
DEFAULT_STATE_TTL = 30.0
# Small timeouts: a region whose KMS does not answer must fail over to another region's slot
# within seconds, not hang a pull for minutes.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10
MAX_ATTEMPTS = 3

_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):\d{12}:key/[A-Za-z0-9-]+$")

# KMS error codes -> (reason, hint). The hint says what an operator should check.
_REFUSALS: dict[str, tuple[str, str]] = {
    "AccessDeniedException": (
        "access denied",
        "check that the key policy, grants and IAM policy allow this principal kms:{action} "
        "with this encryption context, and that the key lives in {region}",
    ),
    "DisabledException": ("the key is disabled", "enable the key (kms:EnableKey)"),
    "KMSInvalidStateException": (
        "the key is not in a usable state (pending deletion, pending import or unavailable)",
        "cancel a scheduled deletion (kms:CancelKeyDeletion) and enable the key",
    ),
    "NotFoundException": (
        "the key does not exist in {region}",
        "check the configured KMS key id and region: a KMS key lives in one region",
    ),
    "InvalidCiphertextException": (
        "wrong encryption context (the slot of another blob, purpose or registry) or a damaged "
        "key slot",
        "the slot was moved, tampered with, or belongs to another registry; run "
        "`model-registry verify` and restore the slot from a backup",
    ),
    "IncorrectKeyException": (
        "the key slot was wrapped by another KMS key",
        "configure the provider with the key the slot was wrapped with",
    ),
    "InvalidKeyUsageException": (
        "the key is not a symmetric ENCRYPT_DECRYPT key",
        "use a symmetric KMS key (KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT)",
    ),
}
# Transient service-side failures: after botocore's retries, another region may still answer.
_UNAVAILABLE = {
    "KMSInternalException",
    "KeyUnavailableException",
    "DependencyTimeoutException",
    "ThrottlingException",
    "ServiceUnavailableException",
}
# A data-plane refusal that means the cached "Enabled" is stale.
_STATE_CHANGED = {"DisabledException", "KMSInvalidStateException", "NotFoundException"}


def make_kms_client(
    region: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> Any:
    """A boto3 KMS client with standard-mode retries and timeouts that fail over quickly."""
    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
        return session.client(
            "kms",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            ),
        )
    except (BotoCoreError, ValueError) as error:
        raise ConfigurationError(
            f"cannot set up a KMS client for {region}: {error}",
            hint="check the AWS profile and region in config.toml",
        ) from None


def _describe_object(context: Mapping[str, str]) -> str:
    """A name for the object a context belongs to, for errors raised before any `what` exists."""
    purpose = context.get("purpose", "data")
    digest = context.get("digest")
    return f"{purpose} key for {digest}" if digest else f"{purpose} key"


class KmsKeyProvider(KeyProvider):
    """Data keys wrapped by one symmetric KMS key in one region (`kek_id` = "aws-kms:" + ARN)."""

    name = PROVIDER
    latency_bound = True

    def __init__(
        self,
        key_id: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        profile: str | None = None,
        client: Any = None,
        max_attempts: int = MAX_ATTEMPTS,
        state_ttl: float = DEFAULT_STATE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`key_id` is a key id, key ARN, alias name or alias ARN. A key ARN is taken as is, so a
        provider for a region that is down right now can still be built (and report that region
        unreachable when used); anything else is resolved to the key ARN by DescribeKey now."""
        self.region = region
        self._client = client or make_kms_client(
            region, endpoint_url=endpoint_url, profile=profile, max_attempts=max_attempts
        )
        self._state_ttl = state_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._enabled_until = float("-inf")
        match = _KEY_ARN.match(key_id)
        if match is not None:
            if match.group(1) != region:
                raise ConfigurationError(
                    f"KMS key {key_id} lives in {match.group(1)}, not in {region}",
                    hint="a KMS key is used in its own region: configure one provider per region",
                )
            self.key_arn = key_id
        else:
            self.key_arn = key_id  # only for messages until DescribeKey answers
            metadata = self._describe_key(what="resolving the configured KMS key")
            self.key_arn = str(metadata["Arn"])
            self._note_state(metadata, what=None)
        # The ARN, never the alias: an alias can be repointed, and slots must keep naming the key
        # that can open them.
        self.kek_id = PROVIDER + ":" + self.key_arn

    # -- KeyProvider -----------------------------------------------------------------------

    def generate(self, *, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        what = _describe_object(context)
        self._ensure_enabled(what=what)
        response = self._call(
            "GenerateDataKey",
            what=what,
            KeyId=self.key_arn,
            KeySpec="AES_256",
            EncryptionContext=dict(context),
        )
        data_key = self._checked_key(response, what=what)
        return data_key, self._slot(response, what=what)

    def wrap(self, data_key: bytes, *, context: Mapping[str, str]) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"a data key has {DATA_KEY_SIZE} bytes, not {len(data_key)}")
        what = _describe_object(context)
        self._ensure_enabled(what=what)
        response = self._call(
            "Encrypt",
            what=what,
            KeyId=self.key_arn,
            Plaintext=bytes(data_key),
            EncryptionContext=dict(context),
        )
        return self._slot(response, what=what)

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str], what: str) -> bytes:
        if wrapped.provider != self.name or wrapped.kek_id != self.kek_id:
            raise KeyAccessError(
                f"{what}: its data key is wrapped by {wrapped.kek_id}, but this provider's key is "
                f"{self.kek_id} (wrong key)",
                hint="open it with the provider for that key and region, or with this region's "
                "own key slot",
            )
        self._ensure_enabled(what=what)
        response = self._call(
            "Decrypt",
            what=what,
            # Pinned so KMS refuses a slot wrapped by any other key instead of quietly using it.
            KeyId=self.key_arn,
            CiphertextBlob=wrapped.ciphertext,
            EncryptionContext=dict(context),
        )
        return self._checked_key(response, what=what)

    # -- helpers ---------------------------------------------------------------------------

    def _slot(self, response: Mapping[str, Any], *, what: str) -> WrappedKey:
        ciphertext = response.get("CiphertextBlob")
        if not isinstance(ciphertext, bytes) or not ciphertext:
            raise IntegrityError(f"{what}: KMS returned no wrapped key", path=what)
        if response.get("KeyId") != self.key_arn:
            # The slot's kek_id must name the key that can open it, or it is unreadable later.
            raise KeyAccessError(
                f"{what}: KMS wrapped the key with {response.get('KeyId')}, not {self.key_arn}"
            )
        return WrappedKey(self.name, self.kek_id, ciphertext)

    @staticmethod
    def _checked_key(response: Mapping[str, Any], *, what: str) -> bytes:
        plaintext = response.get("Plaintext")
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_SIZE:
            raise IntegrityError(f"{what}: KMS returned a malformed data key", path=what)
        return plaintext

    def _ensure_enabled(self, *, what: str) -> None:
        """Refuse unless DescribeKey says the key is Enabled (cached for `state_ttl` seconds).

        KMS itself refuses a disabled key, but emulators (moto) do not, and a key disabled in an
        incident must stop working here too.
        """
        with self._lock:
            if self._clock() < self._enabled_until:
                return
        self._note_state(self._describe_key(what=what), what=what)

    def _note_state(self, metadata: Mapping[str, Any], *, what: str | None) -> None:
        """Cache an Enabled state; raise for any other when `what` is given (a use)."""
        state = metadata.get("KeyState")
        usage = metadata.get("KeyUsage", "ENCRYPT_DECRYPT")
        spec = metadata.get("KeySpec", "SYMMETRIC_DEFAULT")
        if state == "Enabled" and usage == "ENCRYPT_DECRYPT" and spec == "SYMMETRIC_DEFAULT":
            with self._lock:
                self._enabled_until = self._clock() + self._state_ttl
            return
        if what is None:
            return
        if state != "Enabled":
            reason = f"the key state is {state}"
            hint = (
                "cancel the scheduled deletion (kms:CancelKeyDeletion), then enable the key"
                if state == "PendingDeletion"
                else "enable the key (kms:EnableKey)"
            )
        else:
            reason, hint = _REFUSALS["InvalidKeyUsageException"]
        raise KeyAccessError(f"{what}: KMS key {self.key_arn} cannot be used: {reason}", hint=hint)

    def _describe_key(self, *, what: str) -> Mapping[str, Any]:
        response = self._call("DescribeKey", what=what, check_state=False, KeyId=self.key_arn)
        metadata: Mapping[str, Any] = response["KeyMetadata"]
        return metadata

    def _call(self, action: str, *, what: str, check_state: bool = True, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, xform_name(action))(**kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if check_state and code in _STATE_CHANGED:
                with self._lock:
                    self._enabled_until = float("-inf")
            self._refuse(action, code, error, what=what)
        except (BotoConnectionError, HTTPClientError) as error:
            raise KmsUnreachableError(
                f"{what}: KMS in {self.region} did not answer {action} for key {self.key_arn} "
                f"({error})",
                region=self.region,
            ) from None
        except BotoCoreError as error:
            # No credentials, a bad profile, a parameter rejected client-side: not transient.
            raise KeyAccessError(
                f"{what}: {action} with KMS key {self.key_arn} failed: {error}",
                hint="check the AWS credentials (profile, environment, instance role)",
            ) from None

    def _refuse(self, action: str, code: str, error: ClientError, *, what: str) -> NoReturn:
        detail = str(error.response.get("Error", {}).get("Message", "")).strip()
        suffix = f" ({code}: {detail})" if detail else f" ({code})"
        if (
            code in _UNAVAILABLE
            or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
        ):
            raise KmsUnreachableError(
                f"{what}: KMS in {self.region} is unavailable for key {self.key_arn}{suffix}",
                region=self.region,
            ) from None
        reason, hint = _REFUSALS.get(
            code, (f"KMS refused {action}", "check the key policy, grants and key state")
        )
        raise KeyAccessError(
            f"{what}: KMS key {self.key_arn} refused {action}: "
            f"{reason.format(region=self.region)}{suffix}",
            hint=hint.format(action=action, region=self.region),
        ) from None
