"""Signer policies: who must have signed a version (its OpenSSF model signature, checked at its
push and recorded in its manifest and its `version_meta`) before an alias may point at it. Set,
read and cleared here, audited; enforced inside the transaction that moves an alias
(`check_signer`), so no move can slip between a check and its write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry.catalog.audit import append_audit
from registry.catalog.models import SignerPolicy, Version, VersionMeta, utcnow
from registry.catalog.parts import CatalogPart, details_json
from registry.errors import NotFoundError, PolicyError

ANY_ALIAS = "*"
SIGNER_KEY = "openssf.signer"  # the version_meta row: "KIND:IDENTITY"


class PoliciesPart(CatalogPart):
    """The `signer_policies` table."""

    def set_signer_policy(
        self, model: str, alias: str, signers: Sequence[str], *, actor: str
    ) -> None:
        def work(session: Session) -> None:
            row = session.get(SignerPolicy, (model, alias))
            now = utcnow()
            if row is None:
                row = SignerPolicy(model=model, alias=alias)
                session.add(row)
            row.signers = json.dumps(sorted(set(signers)))
            row.updated_at, row.updated_by = now, actor
            append_audit(
                session,
                at=now,
                actor=actor,
                action="signer-policy",
                subject=model,
                details=details_json({"alias": alias, "require": sorted(set(signers))}),
            )

        self._retrying(work, what=f"set the signer policy of {model}")

    def clear_signer_policy(self, model: str, alias: str, *, actor: str) -> None:
        def work(session: Session) -> None:
            if session.get(SignerPolicy, (model, alias)) is None:
                raise NotFoundError(
                    f"{model} has no signer policy for "
                    + ("every alias" if alias == ANY_ALIAS else f"alias {alias}"),
                    hint=f"`model-registry policy show {model}` lists its policies",
                )
            session.execute(
                delete(SignerPolicy).where(SignerPolicy.model == model, SignerPolicy.alias == alias)
            )
            append_audit(
                session,
                at=utcnow(),
                actor=actor,
                action="signer-policy",
                subject=model,
                details=details_json({"alias": alias, "require": []}),
            )

        self._retrying(work, what=f"clear the signer policy of {model}")

    def signer_policies(self, model: str) -> dict[str, tuple[str, ...]]:
        """alias (or "*") -> the identities one of which must have signed."""
        with self._read() as session:
            return {
                row.alias: tuple(json.loads(row.signers))
                for row in session.scalars(select(SignerPolicy).where(SignerPolicy.model == model))
            }


def check_signer(session: Session, model: str, alias: str, version: Version) -> None:
    """Refuse pointing `alias` of `model` at `version` unless its signer is among those the
    model's policy for that alias (or for every alias) requires."""
    rows = session.scalars(
        select(SignerPolicy).where(
            SignerPolicy.model == model, SignerPolicy.alias.in_([alias, ANY_ALIAS])
        )
    ).all()
    if not rows:
        return
    signed = session.scalar(
        select(VersionMeta.value).where(
            VersionMeta.version_id == version.id, VersionMeta.key == SIGNER_KEY
        )
    )
    for row in rows:
        required = json.loads(row.signers)
        if signed is None or not any(matches(signed, wanted) for wanted in required):
            said = "no OpenSSF signature" if signed is None else f"a signature by {signed}"
            raise PolicyError(
                f"{model}@{version.number} has {said}; {model}:{alias} requires one by "
                + " or ".join(required),
                hint="push the version with a model.sig from a required signer "
                "(`model-registry policy show` lists the policy)",
            )


def matches(signed: str, wanted: str) -> bool:
    """`signed` is "KIND:IDENTITY"; a policy names the identity, or the kind and identity."""
    _kind, _, identity = signed.partition(":")
    return wanted in (signed, identity)
