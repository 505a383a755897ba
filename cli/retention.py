"""`retention set|show|plan`: how long versions are kept, and a dry run of what would expire."""

from __future__ import annotations

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, styled, table
from registry import wire
from registry.errors import InvalidInputError

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def retention() -> None:
    """Retention policies: per model, with a registry-wide default."""


@retention.command("set")
@click.argument("name", required=False)
@click.option("--default", "default", is_flag=True, help="Set the registry-wide default.")
@click.option("--keep-last", type=int, help="Keep the newest N versions.")
@click.option("--keep-within", metavar="DURATION", help="Keep versions younger than this (90d).")
@click.option(
    "--keep-demoted-for",
    metavar="DURATION",
    help="Keep a version this long after an alias left it.",
)
@click.option("--clear", is_flag=True, help="Remove every rule (keep everything).")
@JSON
@handle_errors
def set_(
    name: str | None,
    default: bool,
    keep_last: int | None,
    keep_within: str | None,
    keep_demoted_for: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Replace the policy of NAME (or, with --default, of every model without its own).
    Aliased versions and versions under legal hold are always kept."""
    if (name is None) == (not default):
        raise InvalidInputError("give a model NAME or --default, not both or neither")
    with open_registry() as registry:
        policy = registry.set_retention(
            name,
            keep_last=keep_last,
            keep_within=keep_within,
            keep_demoted_for=keep_demoted_for,
            clear=clear,
        )
    if as_json:
        print_json(wire.ModelPolicy.of(name or "*", policy))
    else:
        stdout.print(f"{name or 'default'}: {policy.describe()}")


@retention.command()
@click.argument("name")
@JSON
@handle_errors
def show(name: str, as_json: bool) -> None:
    """The policy in force for NAME and where it comes from."""
    with open_registry() as registry:
        policy, source = registry.retention(name)
    origin = {"*": "the registry default", "none": "no policy set"}.get(source, "its own policy")
    if as_json:
        print_json(wire.Retention.of(name, policy, source))
    else:
        stdout.print(f"{name}: {policy.describe()}  ({origin})")


@retention.command("plan")
@click.argument("name", required=False)
@JSON
@handle_errors
def plan_(name: str | None, as_json: bool) -> None:
    """Dry run: which versions would expire, and why each other one is kept."""
    with open_registry() as registry:
        plans = registry.plan_retention(name)
    if as_json:
        print_json(
            [wire.RetentionPlan.of(model, policy, decisions) for model, policy, decisions in plans]
        )
        return
    found = table("version", "decision", wide=("why",))
    for model, _policy, decisions in plans:
        for d in decisions:
            found.add_row(
                f"{model}@{d.number}",
                "keep" if d.keep else styled("expire", "bold"),
                "; ".join(d.reasons) or "no rule keeps it",
            )
    print_table(found)


def register(group: click.Group) -> None:
    group.add_command(retention)
