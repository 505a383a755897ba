"""`model-registry init`: create or check a registry home."""

from __future__ import annotations

from pathlib import Path

import click

from cli.ui import handle_errors, local_only, print_json, stdout
from registry import wire
from registry.errors import InvalidInputError


@click.command()
@click.option("--catalog-url", help="SQLAlchemy URL of the catalog (default: SQLite in the home).")
@click.option(
    "--store",
    "stores",
    multiple=True,
    help="Store: a directory (default HOME/store) or s3://BUCKET[/PREFIX]?region=R&endpoint=URL"
    "&profile=P&lock=COMPLIANCE&retention_days=30&kms=KEY&name=N&priority=P. Repeat it for "
    "several regions (read in this order unless priority= says otherwise).",
)
@click.option(
    "--write-quorum",
    type=int,
    help="Regions that must hold a verified copy for a push to succeed (default: all).",
)
@click.option(
    "--key-dir",
    type=click.Path(path_type=Path),
    help="Where the key files go (default HOME/keys); must be outside the store.",
)
@click.option("--kms-key", help="Wrap data keys with this AWS KMS key (ARN) instead of a key file.")
@click.option("--kms-region", help="The KMS key's region (required with --kms-key).")
@click.option("--kms-endpoint", help="A KMS endpoint URL (KMS-compatible services, tests).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def init(
    catalog_url: str | None,
    stores: tuple[str, ...],
    write_quorum: int | None,
    key_dir: Path | None,
    kms_key: str | None,
    kms_region: str | None,
    kms_endpoint: str | None,
    as_json: bool,
) -> None:
    """Create a registry (idempotent: an existing one is checked and its catalog upgraded)."""
    local_only("init")
    from registry.config import KmsSettings

    kms = None
    if kms_key or kms_region or kms_endpoint:
        if not (kms_key and kms_region):
            raise InvalidInputError("--kms-key and --kms-region go together")
        kms = KmsSettings(kms_key, kms_region, kms_endpoint)
    from registry.service import Registry

    result = Registry.init(
        catalog_url=catalog_url,
        store=list(stores),
        key_dir=key_dir,
        kms=kms,
        write_quorum=write_quorum,
    )
    if as_json:
        print_json(wire.InitResult.of(result))
        return
    verb = "created" if result.created else "already initialised:"
    stdout.print(f"{verb} registry {result.registry_id} in {result.home}")
    stdout.print(f"  catalog    {result.catalog_url}")
    stdout.print(f"  store      {result.store}")
    stdout.print(f"  keys       {result.keys}  (back key files up apart from the store)")
    stdout.print(f"  signer     {result.public_key}")


def register(group: click.Group) -> None:
    group.add_command(init)
