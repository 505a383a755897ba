"""A push's provenance made exact: the base model it names resolved and pinned by digest, the
rest validated; and an OpenSSF model signature of the pushed files checked against their
digests and the trusted OpenSSF signers, its signer recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from registry.errors import ConfigurationError, IntegrityError
from registry.manifest import ManifestFile
from registry.ops.context import Context
from registry.ops.queries import resolve
from registry.provenance import BaseModel, OpenSSFSigner, Provenance, ProvenanceRequest


def resolve_provenance(ctx: Context, request: ProvenanceRequest | None) -> Provenance | None:
    """The provenance a push states, with its base model pinned (NotFoundError for a base
    model that does not resolve: a lineage must point at a version that exists)."""
    if request is None or request.empty:
        return None
    base = None
    if request.base_model is not None:
        version = resolve(ctx, request.base_model)
        base = BaseModel(version.name, version.number, version.digest)
    return Provenance(
        request.meta,
        request.source_repo,
        request.source_commit,
        request.run_url,
        base,
        request.datasets,
    )


def with_signature(
    ctx: Context,
    stated: Provenance | None,
    signature: bytes,
    files: Sequence[ManifestFile],
) -> Provenance:
    """`stated` with the signer of `signature` recorded, once the signature is checked: its
    form and cryptography against the trusted OpenSSF signers of `[openssf]`, then its
    statement against the files' own digests (SHA-256 and BLAKE3, taken in the push's read)."""
    from registry.crypto.openssf import OpenSSFTrust, check_resources, verify_model_signature

    settings = ctx.settings.openssf
    if not (settings.trusted_keys or settings.trusted_ca or settings.sigstore_trust_config):
        raise ConfigurationError(
            "this push carries an OpenSSF model signature (model.sig), and this registry "
            "trusts no OpenSSF signer to check it against",
            hint="list the signers' keys, CA roots or Sigstore identities under [openssf] in "
            "config.toml (docs/provenance.md), or push without model.sig",
        )
    trust = OpenSSFTrust.from_files(
        keys=settings.trusted_keys,
        ca_roots=settings.trusted_ca,
        sigstore_trust_config=settings.sigstore_trust_config,
        sigstore_identities=settings.sigstore_identities,
    )
    verified = verify_model_signature(signature, trust=trust)
    digests = {
        entry.path: {"blake3": entry.digest.removeprefix("blake3:")}
        | ({"sha256": entry.sha256} if entry.sha256 else {})
        for entry in files
    }
    unsigned = check_resources(verified, digests)
    if unsigned:
        raise IntegrityError(
            f"model.sig leaves files of the push unsigned: {', '.join(unsigned)}",
            hint="sign every file you push (or push without the files the signature skips)",
        )
    base = stated or Provenance()
    return dataclasses.replace(
        base,
        openssf=OpenSSFSigner(
            verified.kind, verified.identity, verified.issuer, verified.bundle_digest
        ),
    )
