"""Signer policies of a model: which OpenSSF signers a version needs before an alias (or any
alias) may point at it. Set and cleared by an admin, audited; enforced by every alias move
(`catalog.policies.check_signer`, in the move's own transaction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from registry.errors import InvalidInputError
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.journaling import journaled
from registry.refs import validate_alias, validate_name

ANY_ALIAS = "*"


def _alias(alias: str | None) -> str:
    return ANY_ALIAS if alias is None or alias == ANY_ALIAS else validate_alias(alias)


_KINDS = ("key", "certificate", "sigstore")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def check_signer_name(signer: str) -> str:
    """An identity as a policy names it: IDENTITY, or KIND:IDENTITY with a known kind, a key's
    being its whole SHA-256 fingerprint (a shortened one could never match)."""
    check_text("signer", signer, limit=512)
    if not signer.strip() or signer != signer.strip():
        raise InvalidInputError(f"invalid signer identity {signer!r}")
    kind, colon, identity = signer.partition(":")
    if colon and kind in _KINDS:
        if not identity:
            raise InvalidInputError(f"{signer!r} names no identity")
        if kind == "key" and not _FINGERPRINT.fullmatch(identity):
            raise InvalidInputError(
                f"{signer!r}: a key is named by its whole SHA-256 fingerprint (64 hex digits)",
                hint="`model-registry show REF` prints a signed version's; `keys export "
                "--openssf` the registry's own",
            )
    elif colon and "/" not in kind and "@" not in kind and kind.isalpha():
        raise InvalidInputError(
            f"{signer!r}: unknown signer kind {kind!r}",
            hint="key:FINGERPRINT, certificate:SAN, sigstore:IDENTITY, or the identity alone",
        )
    return signer


@requires("policy")
@journaled
def set_signer_policy(
    ctx: Context, name: str, signers: Sequence[str], *, alias: str | None = None
) -> dict[str, tuple[str, ...]]:
    """Require one of `signers` (OpenSSF identities: a key fingerprint, a certificate's SAN, a
    Sigstore identity; or KIND:IDENTITY) of every version `alias` of `name` (None: any alias)
    points at from now on. Existing aliases are not moved. Returns the model's policies."""
    validate_name(name)
    if not signers:
        raise InvalidInputError(
            "a signer policy names at least one signer",
            hint="--require-signer IDENTITY (repeatable); `policy clear` removes a policy",
        )
    for signer in signers:
        check_signer_name(signer)
    ctx.catalog.versions(name)  # NotFoundError for an unknown model
    ctx.catalog.set_signer_policy(name, _alias(alias), signers, actor=ctx.actor)
    return ctx.catalog.signer_policies(name)


@requires("policy")
@journaled
def clear_signer_policy(ctx: Context, name: str, *, alias: str | None = None) -> None:
    ctx.catalog.clear_signer_policy(validate_name(name), _alias(alias), actor=ctx.actor)


@requires("read")
def signer_policies(ctx: Context, name: str) -> dict[str, tuple[str, ...]]:
    """alias ("*": every alias) -> the signers one of which must have signed."""
    return ctx.catalog.signer_policies(validate_name(name))
