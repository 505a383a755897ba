"""Signers: the keys whose manifests the registry trusts, and a new signing key for this
registry; both kept in config.toml.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from registry.config import (
    CONFIG_FILE,
    Webhook,
    load_settings,
    raw_config,
    render_config,
    write_atomically,
)
from registry.crypto.signing import (
    Signer,
    TrustedSigner,
    parse_public_key,
    public_key_text,
)
from registry.errors import (
    InvalidInputError,
    NotFoundError,
)
from registry.ops.access import requires
from registry.ops.context import Context


def _signer_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInputError(f"invalid signer name {name!r}: use letters, digits, - _ .")
    return name


@requires("signers")
def trust_signer(ctx: Context, name: str, public_key: str) -> TrustedSigner:
    """Add a public key (e.g. a CI signer's) to the trusted signers in config.toml."""
    signer = TrustedSigner(_signer_name(name), parse_public_key(public_key))
    with editing_config(ctx) as config:
        entries = config.setdefault("trusted_signers", [])
        for entry in entries:
            if entry.get("name") == signer.name:
                raise InvalidInputError(
                    f"a signer named {signer.name} is already trusted",
                    hint="choose another name, or `model-registry keys untrust` it first",
                )
        entries.append({"name": signer.name, "public_key": public_key_text(signer.public_key)})
    return signer


@requires("signers")
def untrust_signer(ctx: Context, name: str) -> None:
    with editing_config(ctx) as config:
        entries = config.get("trusted_signers", [])
        kept = [entry for entry in entries if entry.get("name") != name]
        if len(kept) == len(entries):
            raise NotFoundError(f"no trusted signer named {name}")
        config["trusted_signers"] = kept


@requires("signers")
def new_signing_key(ctx: Context) -> str:
    """Replace this home's signing key with a new one (the old key stays trusted so its
    manifests still verify); returns the new public key to trust elsewhere."""
    old = ctx.settings.signing_key_file
    new_path = old.with_name(f"signing-{uuid.uuid4().hex[:8]}.key")
    signer = Signer.create(new_path)
    text = public_key_text(signer.public_key)
    with editing_config(ctx) as config:
        config["keys"]["signing_key_file"] = str(new_path)
        config.setdefault("trusted_signers", []).append(
            {"name": f"local-{signer.key_id[:8]}", "public_key": text}
        )
    ctx.home.signer = signer
    return text


@contextmanager
def editing_config(ctx: Context) -> Iterator[dict[str, Any]]:
    """Edit config.toml as data; it is rewritten atomically when the block ends cleanly."""
    home = ctx.settings.home
    config = raw_config(home)
    yield config
    keys = config["keys"]
    text = render_config(
        registry_id=str(config["registry_id"]),
        catalog_url=str(config["catalog"]["url"]),
        regions=ctx.settings.regions,
        write_quorum=ctx.settings.write_quorum,
        chunk_size=int(config["store"].get("chunk_size", ctx.settings.chunk_size)),
        kek_file=keys.get("kek_file"),
        naming_key_file=str(keys["naming_key_file"]),
        signing_key_file=str(keys["signing_key_file"]),
        trusted_signers=[
            (str(s["name"]), str(s["public_key"])) for s in config.get("trusted_signers", [])
        ],
        workers=int(config.get("workers", 0)),
        webhooks=tuple(
            Webhook(str(entry["url"]), Path(str(entry["secret_file"])))
            for entry in config.get("webhooks", [])
        ),
        api=ctx.settings.api,
        deadlines=ctx.settings.deadlines,
        openssf=ctx.settings.openssf,
        previous_kek_files=[str(value) for value in keys.get("previous_kek_files", [])],
    )
    write_atomically(home / CONFIG_FILE, text)
    ctx.home.settings = load_settings(home)
