"""What keys a registry uses, as `keys show` lists them: this home's signing key, each region's
key-encryption key (and the keys a rotation is moving away from), and the trusted signers. Public
material only: nothing here unwraps or signs.
"""

from __future__ import annotations

from registry.crypto.signing import public_key_text
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.rotation import region_keys
from registry.reports import KeysReport, SignerKey


@requires("read")
def key_report(ctx: Context) -> KeysReport:
    """The signing key, every region's key-encryption key and the trusted signers."""
    settings = ctx.settings
    return KeysReport(
        signing_public_key=public_key_text(ctx.signer.public_key),
        signing_key_id=ctx.signer.key_id,
        # The preferred region's key and the local key file (None when every region uses
        # KMS), as before regions had keys of their own.
        kek_id=ctx.keys.kek_id,
        kek_file=None if settings.kek_file is None else str(settings.kek_file),
        regions=region_keys(ctx),
        trusted_signers=tuple(
            SignerKey(s.name, s.key_id, public_key_text(s.public_key))
            for s in settings.trusted_signers
        ),
    )
