"""OpenSSF model signatures made by this registry: the key it signs with (a key file made on
first use, or an AWS KMS key), the public key verifiers need, and `model.sig` for a version,
built from the SHA-256 digests its signed manifest records (nothing is hashed again).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from registry.errors import InvalidInputError
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.queries import show
from registry.reports import OpenSSFKey

if TYPE_CHECKING:
    from registry.crypto.openssf_keys import OpenSSFSigner


def signer(ctx: Context) -> OpenSSFSigner:
    """The registry's OpenSSF signer: `[openssf] kms_key`, else the key file (made now, 0600,
    P-256, when it does not exist yet)."""
    from registry.crypto.openssf_keys import KmsSigner, LocalKeySigner, generate_key

    settings = ctx.settings.openssf
    if settings.kms_key is not None:
        from registry.crypto.kms import make_kms_client

        region = settings.kms_region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        client = make_kms_client(region, endpoint_url=settings.kms_endpoint_url)
        return KmsSigner(settings.kms_key, client=client)
    path = settings.signing_key_file(ctx.settings.home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return generate_key(path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    return LocalKeySigner.from_file(path)


@requires("read")
def openssf_public_key(ctx: Context) -> OpenSSFKey:
    """The public key of the registry's OpenSSF signer (`keys export --openssf`)."""
    from registry.crypto.openssf_keys import public_key_fingerprint

    pem = signer(ctx).public_key_pem()
    return OpenSSFKey(pem, public_key_fingerprint(pem))


@requires("pull")
def openssf_signature(ctx: Context, ref: str) -> bytes:
    """`model.sig` for version `ref`: an OpenSSF model signature, by the registry's OpenSSF key,
    of the version's files and their recorded SHA-256 digests; audited (`openssf-sign`)."""
    from registry.crypto.openssf import Resource, sign_model
    from registry.crypto.openssf_keys import public_key_fingerprint

    details = show(ctx, ref)
    manifest = details.manifest
    if any(entry.sha256 is None for entry in manifest.files):
        raise InvalidInputError(
            f"{details.version.ref} was pushed before SHA-256 digests were recorded "
            "(manifest version 2): it cannot be given an OpenSSF signature without hashing "
            "its files again",
            hint="push the same files again with provenance (e.g. --meta) to make a version "
            "that can be signed",
        )
    resources = [
        Resource(entry.path, "sha256", entry.sha256)
        for entry in manifest.files
        if entry.sha256 is not None
    ]
    chosen = signer(ctx)
    data = sign_model(resources, model_name=details.version.name, signer=chosen)
    ctx.catalog.audit(
        ctx.actor,
        "openssf-sign",
        details.version.name,
        {
            "version": details.version.number,
            "digest": details.version.digest,
            "key": public_key_fingerprint(chosen.public_key_pem()),
        },
    )
    return data
