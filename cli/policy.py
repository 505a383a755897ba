"""`policy set|show|clear`: which OpenSSF signers a version needs before an alias may point at
it (docs/provenance.md)."""

from __future__ import annotations

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def policy() -> None:
    """Signer policies: who must have signed a version before an alias points at it."""


@policy.command("set")
@click.argument("name")
@click.option("--alias", metavar="ALIAS", help="The alias it guards (default: every alias).")
@click.option(
    "--require-signer",
    "signers",
    multiple=True,
    required=True,
    metavar="IDENTITY",
    help="A signer one of which must have signed (repeatable): a key fingerprint, a "
    "certificate's SAN, a Sigstore identity, or KIND:IDENTITY.",
)
@JSON
@handle_errors
def set_(name: str, alias: str | None, signers: tuple[str, ...], as_json: bool) -> None:
    """From now on, refuse pointing ALIAS of NAME (every alias without --alias) at a version
    that lacks an OpenSSF signature by one of the signers. Replaces that alias's list; an
    alias's policy and the every-alias policy both apply. Aliases are not moved now."""
    with open_registry() as registry:
        policies = registry.set_signer_policy(name, list(signers), alias=alias)
    _print(name, policies, as_json=as_json)


@policy.command()
@click.argument("name")
@JSON
@handle_errors
def show(name: str, as_json: bool) -> None:
    """The signer policies of NAME."""
    with open_registry() as registry:
        policies = registry.signer_policies(name)
    _print(name, policies, as_json=as_json)


@policy.command()
@click.argument("name")
@click.option("--alias", metavar="ALIAS", help="The alias's policy (default: every alias's).")
@JSON
@handle_errors
def clear(name: str, alias: str | None, as_json: bool) -> None:
    """Remove a signer policy of NAME."""
    with open_registry() as registry:
        registry.clear_signer_policy(name, alias=alias)
        policies = registry.signer_policies(name)
    _print(name, policies, as_json=as_json)


def _print(name: str, policies: dict[str, tuple[str, ...]], *, as_json: bool) -> None:
    if as_json:
        print_json({"model": name, "policies": {a: list(s) for a, s in sorted(policies.items())}})
        return
    if not policies:
        stdout.print(f"{name}: no signer policy (any version may be promoted)")
        return
    # One row per signer, kept whole: an identity is copied back into commands.
    found = table("alias", "requires a signature by one of")
    for alias, signers in sorted(policies.items()):
        for signer in signers:
            found.add_row("every alias" if alias == "*" else alias, signer)
    print_table(found)


def register(group: click.Group) -> None:
    group.add_command(policy)
