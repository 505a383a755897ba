"""`model-registry init`: create or check a registry home."""

from __future__ import annotations

from pathlib import Path

import click

from cli.ui import handle_errors, print_json, stdout
from registry.service import Registry


@click.command()
@click.option("--catalog-url", help="SQLAlchemy URL of the catalog (default: SQLite in the home).")
@click.option(
    "--store",
    help="Store: a directory (default HOME/store) or "
    "s3://BUCKET[/PREFIX]?region=R&endpoint=URL&profile=P&lock=COMPLIANCE&retention_days=30.",
)
@click.option(
    "--key-dir",
    type=click.Path(path_type=Path),
    help="Where the key files go (default HOME/keys); must be outside the store.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def init(catalog_url: str | None, store: str | None, key_dir: Path | None, as_json: bool) -> None:
    """Create a registry (idempotent: an existing one is checked and its catalog upgraded)."""
    result = Registry.init(catalog_url=catalog_url, store=store, key_dir=key_dir)
    if as_json:
        print_json(
            {
                "home": str(result.home),
                "created": result.created,
                "registry_id": result.registry_id,
                "catalog_url": result.catalog_url,
                "store": result.store,
                "kek_file": str(result.kek_file),
                "public_key": result.public_key,
            }
        )
        return
    verb = "created" if result.created else "already initialised:"
    stdout.print(f"{verb} registry {result.registry_id} in {result.home}")
    stdout.print(f"  catalog    {result.catalog_url}")
    stdout.print(f"  store      {result.store}")
    stdout.print(f"  key file   {result.kek_file}  (back it up apart from the store)")
    stdout.print(f"  signer     {result.public_key}")


def register(group: click.Group) -> None:
    group.add_command(init)
