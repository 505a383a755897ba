"""The AWS KMS key provider against moto: round trips, encryption-context binding, key state the
registry checks itself (moto decrypts with disabled keys), error mapping, and per-region slots
that keep working while another region's KMS is unreachable."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from moto import mock_aws

from registry.crypto.keys import DATA_KEY_SIZE, LocalKeyProvider, WrappedKey
from registry.crypto.kms import KmsKeyProvider
from registry.digest import hash_bytes
from registry.errors import ConfigurationError, IntegrityError, KeyAccessError, KmsUnreachableError

REGION_A = "us-east-1"
REGION_B = "eu-west-1"
CONTEXT = {"registry": "mr-0b5e7c1d", "purpose": "blob", "digest": hash_bytes(b"weights")}
WHAT = "llama/model-00001.safetensors"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Proxy:
    """A KMS client that forwards to moto, counts calls, and lets a test replace an operation."""

    def __init__(self, inner: Any, **overrides: Callable[..., Any]) -> None:
        self.inner = inner
        self.overrides = overrides
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return self.overrides.get(name) or getattr(self.inner, name)


def refusing(code: str, message: str = "", *, status: int = 400) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        raise ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "Decrypt",
        )

    return call


def closed_port_url() -> str:
    """An endpoint nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def kms_a(aws: None) -> Any:
    return boto3.client("kms", region_name=REGION_A)


@pytest.fixture
def key_a(kms_a: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = kms_a.create_key(Description="registry A")["KeyMetadata"]
    kms_a.create_alias(AliasName="alias/model-registry", TargetKeyId=metadata["KeyId"])
    return metadata


@pytest.fixture
def provider(key_a: dict[str, Any]) -> KmsKeyProvider:
    return KmsKeyProvider(key_a["Arn"], region=REGION_A)


# -- round trips -----------------------------------------------------------------------------


def test_generate_then_unwrap_round_trips(provider: KmsKeyProvider, key_a: dict[str, Any]) -> None:
    data_key, slot = provider.generate(context=CONTEXT)
    assert len(data_key) == DATA_KEY_SIZE
    assert slot.provider == "aws-kms"
    assert slot.kek_id == "aws-kms:" + key_a["Arn"]
    assert provider.unwrap(slot, context=CONTEXT, what=WHAT) == data_key
    assert provider.generate(context=CONTEXT)[0] != data_key


def test_wrap_of_an_existing_key_unwraps_to_it(provider: KmsKeyProvider) -> None:
    data_key = os.urandom(DATA_KEY_SIZE)
    slot = provider.wrap(data_key, context=CONTEXT)
    assert provider.unwrap(slot, context=CONTEXT, what=WHAT) == data_key
    with pytest.raises(ValueError, match="32 bytes"):
        provider.wrap(data_key[:16], context=CONTEXT)


def test_slot_json_holds_neither_the_digest_nor_the_key(provider: KmsKeyProvider) -> None:
    data_key, slot = provider.generate(context=CONTEXT)
    text = slot.to_json()
    digest_hex = CONTEXT["digest"].split(":", 1)[1]
    assert digest_hex.encode() not in text
    assert CONTEXT["registry"].encode() not in text
    for form in (data_key, data_key.hex().encode(), base64.b64encode(data_key)):
        assert form not in text
    assert data_key not in slot.ciphertext
    assert WrappedKey.from_json(text, what=WHAT) == slot


def test_kek_id_is_the_key_arn_whichever_way_the_key_is_named(
    provider: KmsKeyProvider, key_a: dict[str, Any]
) -> None:
    alias_arn = key_a["Arn"].split(":key/")[0] + ":alias/model-registry"
    names = [key_a["KeyId"], key_a["Arn"], "alias/model-registry", alias_arn]
    providers = [KmsKeyProvider(name, region=REGION_A) for name in names]
    assert {p.kek_id for p in providers} == {"aws-kms:" + key_a["Arn"]}
    data_key, slot = providers[2].generate(context=CONTEXT)
    for other in providers:
        assert other.unwrap(slot, context=CONTEXT, what=WHAT) == data_key


# -- the encryption context and the key are bound ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", hash_bytes(b"other weights")),
        ("registry", "mr-someone-else"),
        ("purpose", "manifest"),
    ],
)
def test_a_changed_context_is_refused(provider: KmsKeyProvider, field: str, value: str) -> None:
    data_key, slot = provider.generate(context=CONTEXT)
    with pytest.raises(KeyAccessError, match="encryption context") as caught:
        provider.unwrap(slot, context={**CONTEXT, field: value}, what=WHAT)
    assert WHAT in caught.value.message
    assert provider.key_arn in caught.value.message
    assert data_key.hex() not in str(caught.value)


def test_a_slot_for_another_provider_or_key_is_the_wrong_key(provider: KmsKeyProvider) -> None:
    local = LocalKeyProvider(bytes(range(32)))
    _, local_slot = local.generate(context=CONTEXT)
    with pytest.raises(KeyAccessError, match="wrong key"):
        provider.unwrap(local_slot, context=CONTEXT, what=WHAT)
    _, slot = provider.generate(context=CONTEXT)
    renamed = WrappedKey(slot.provider, "aws-kms:arn:aws:kms:us-east-1:1:key/x", slot.ciphertext)
    with pytest.raises(KeyAccessError, match="wrong key"):
        provider.unwrap(renamed, context=CONTEXT, what=WHAT)


def test_a_slot_wrapped_by_another_key_but_relabelled_is_refused_by_kms(
    provider: KmsKeyProvider, kms_a: Any
) -> None:
    other_arn = kms_a.create_key()["KeyMetadata"]["Arn"]
    other = KmsKeyProvider(other_arn, region=REGION_A)
    _, foreign = other.generate(context=CONTEXT)
    forged = WrappedKey("aws-kms", provider.kek_id, foreign.ciphertext)
    with pytest.raises(KeyAccessError, match=provider.key_arn):
        provider.unwrap(forged, context=CONTEXT, what=WHAT)


# -- key state: checked by the registry, since moto does not ----------------------------------


def test_a_disabled_key_is_refused_although_moto_would_decrypt(
    provider: KmsKeyProvider, kms_a: Any, key_a: dict[str, Any]
) -> None:
    data_key, slot = provider.generate(context=CONTEXT)
    # moto's disable_key wants the bare key id: with the ARN it fails with an internal KeyError.
    kms_a.disable_key(KeyId=key_a["KeyId"])
    moto_alone = kms_a.decrypt(
        CiphertextBlob=slot.ciphertext, EncryptionContext=CONTEXT, KeyId=key_a["Arn"]
    )
    assert moto_alone["Plaintext"] == data_key  # so only the registry's own check can refuse

    fresh = KmsKeyProvider(key_a["Arn"], region=REGION_A)
    with pytest.raises(KeyAccessError, match="Disabled") as caught:
        fresh.unwrap(slot, context=CONTEXT, what=WHAT)
    assert WHAT in caught.value.message
    assert key_a["Arn"] in caught.value.message
    assert "enable" in caught.value.hint
    with pytest.raises(KeyAccessError, match="Disabled"):
        fresh.generate(context=CONTEXT)
    with pytest.raises(KeyAccessError, match="Disabled"):
        fresh.wrap(data_key, context=CONTEXT)


def test_a_key_pending_deletion_is_refused(
    provider: KmsKeyProvider, kms_a: Any, key_a: dict[str, Any]
) -> None:
    _, slot = provider.generate(context=CONTEXT)
    kms_a.schedule_key_deletion(KeyId=key_a["KeyId"], PendingWindowInDays=7)
    fresh = KmsKeyProvider(key_a["Arn"], region=REGION_A)
    with pytest.raises(KeyAccessError, match="PendingDeletion"):
        fresh.unwrap(slot, context=CONTEXT, what=WHAT)
    with pytest.raises(KeyAccessError, match="PendingDeletion"):
        fresh.generate(context=CONTEXT)


def test_key_state_is_cached_briefly_and_refusals_are_not(
    kms_a: Any, key_a: dict[str, Any]
) -> None:
    clock = FakeClock()
    client = Proxy(kms_a)
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A, client=client, clock=clock)
    data_key, slot = provider.generate(context=CONTEXT)
    for _ in range(5):
        provider.unwrap(slot, context=CONTEXT, what=WHAT)
    assert client.calls["describe_key"] == 1

    kms_a.disable_key(KeyId=key_a["KeyId"])
    clock.now += 31  # past the TTL: the disabled key is noticed
    with pytest.raises(KeyAccessError, match="Disabled"):
        provider.unwrap(slot, context=CONTEXT, what=WHAT)
    kms_a.enable_key(KeyId=key_a["KeyId"])
    # The refusal was not cached: re-enabling works at once.
    assert provider.unwrap(slot, context=CONTEXT, what=WHAT) == data_key
    assert client.calls["describe_key"] == 3


def test_a_disabled_exception_from_kms_forgets_the_cached_state(
    kms_a: Any, key_a: dict[str, Any]
) -> None:
    client = Proxy(kms_a)
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A, client=client, clock=FakeClock())
    data_key, slot = provider.generate(context=CONTEXT)
    client.overrides["decrypt"] = refusing("DisabledException", f"{key_a['Arn']} is disabled.")
    with pytest.raises(KeyAccessError, match="disabled"):
        provider.unwrap(slot, context=CONTEXT, what=WHAT)
    del client.overrides["decrypt"]
    assert provider.unwrap(slot, context=CONTEXT, what=WHAT) == data_key
    assert client.calls["describe_key"] == 2  # checked again after KMS said disabled


def test_a_key_that_cannot_wrap_is_refused(kms_a: Any) -> None:
    arn = kms_a.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    with pytest.raises(KeyAccessError, match="symmetric"):
        KmsKeyProvider(arn, region=REGION_A).generate(context=CONTEXT)


# -- other refusals ----------------------------------------------------------------------------


def test_access_denied_is_a_key_access_error_with_a_hint(kms_a: Any, key_a: dict[str, Any]) -> None:
    denied = refusing(
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: kms:Decrypt",
    )
    client = Proxy(kms_a)
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A, client=client)
    _, slot = provider.generate(context=CONTEXT)
    client.overrides.update(decrypt=denied, generate_data_key=denied)
    with pytest.raises(KeyAccessError, match="access denied") as caught:
        provider.unwrap(slot, context=CONTEXT, what=WHAT)
    assert not isinstance(caught.value, KmsUnreachableError)
    assert WHAT in caught.value.message
    assert key_a["Arn"] in caught.value.message
    assert "not authorized" in caught.value.message
    assert "key policy" in caught.value.hint
    assert "kms:Decrypt" in caught.value.hint
    with pytest.raises(KeyAccessError, match="access denied"):
        provider.generate(context=CONTEXT)


def test_an_unknown_key_or_a_key_of_another_region(aws: None) -> None:
    with pytest.raises(KeyAccessError, match="does not exist"):
        KmsKeyProvider("alias/nothing-here", region=REGION_A)
    with pytest.raises(ConfigurationError, match="lives in us-east-1"):
        KmsKeyProvider(
            "arn:aws:kms:us-east-1:123456789012:key/0e4b1a52-0000-4000-8000-000000000000",
            region=REGION_B,
        )


def test_a_malformed_data_key_from_kms_is_an_integrity_error(
    kms_a: Any, key_a: dict[str, Any]
) -> None:
    client = Proxy(kms_a)
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A, client=client)
    _, slot = provider.generate(context=CONTEXT)
    client.overrides["decrypt"] = lambda **kwargs: {"Plaintext": b"k" * 16, "KeyId": key_a["Arn"]}
    with pytest.raises(IntegrityError, match="malformed data key"):
        provider.unwrap(slot, context=CONTEXT, what=WHAT)
    client.overrides["generate_data_key"] = lambda **kwargs: {
        "Plaintext": b"k" * 16,
        "CiphertextBlob": b"c" * 64,
        "KeyId": key_a["Arn"],
    }
    with pytest.raises(IntegrityError, match="malformed data key"):
        provider.generate(context=CONTEXT)


# -- unreachable regions -----------------------------------------------------------------------


def test_an_unreachable_endpoint_fails_fast_as_unreachable(key_a: dict[str, Any]) -> None:
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A)
    _, slot = provider.generate(context=CONTEXT)
    down = KmsKeyProvider(
        key_a["Arn"], region=REGION_A, endpoint_url=closed_port_url(), max_attempts=2
    )
    assert down.kek_id == provider.kek_id  # built without calling KMS: the ARN is the id
    started = time.monotonic()
    with pytest.raises(KmsUnreachableError, match="did not answer") as caught:
        down.unwrap(slot, context=CONTEXT, what=WHAT)
    assert time.monotonic() - started < 10
    assert isinstance(caught.value, KeyAccessError)
    assert caught.value.region == REGION_A
    assert WHAT in caught.value.message
    with pytest.raises(KmsUnreachableError):
        KmsKeyProvider("alias/model-registry", region=REGION_A, endpoint_url=closed_port_url())


def test_timeouts_and_service_failures_are_unreachable(kms_a: Any, key_a: dict[str, Any]) -> None:
    client = Proxy(kms_a)
    provider = KmsKeyProvider(key_a["Arn"], region=REGION_A, client=client)
    _, slot = provider.generate(context=CONTEXT)

    def timeout(**kwargs: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="https://kms.us-east-1.amazonaws.com/")

    for failure in (timeout, refusing("KMSInternalException", status=500)):
        client.overrides["decrypt"] = failure
        with pytest.raises(KmsUnreachableError):
            provider.unwrap(slot, context=CONTEXT, what=WHAT)


def test_each_region_opens_its_own_slot_while_the_other_is_down(key_a: dict[str, Any]) -> None:
    kms_b = boto3.client("kms", region_name=REGION_B)
    key_b = kms_b.create_key(Description="registry B")["KeyMetadata"]
    region_a = KmsKeyProvider(key_a["Arn"], region=REGION_A)
    region_b = KmsKeyProvider(key_b["Arn"], region=REGION_B)
    data_key, slot_a = region_a.generate(context=CONTEXT)
    slot_b = region_b.wrap(data_key, context=CONTEXT)
    assert slot_a.kek_id != slot_b.kek_id

    a_down = KmsKeyProvider(
        key_a["Arn"], region=REGION_A, endpoint_url=closed_port_url(), max_attempts=1
    )
    opened: bytes | None = None
    for candidate, slot in ((a_down, slot_a), (region_b, slot_b)):
        try:
            opened = candidate.unwrap(slot, context=CONTEXT, what=WHAT)
            break
        except KmsUnreachableError:
            continue
    assert opened == data_key
    with pytest.raises(KmsUnreachableError):
        a_down.unwrap(slot_a, context=CONTEXT, what=WHAT)
    # Region B's key cannot open region A's slot: a slot per region is needed.
    with pytest.raises(KeyAccessError, match="wrong key"):
        region_b.unwrap(slot_a, context=CONTEXT, what=WHAT)
