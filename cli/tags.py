"""`tag add|rm|ls`: a version's tags, labels that can change (audited; adding or removing one
needs the promoter role)."""

from __future__ import annotations

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table
from registry import wire

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group("tag")
def tag_group() -> None:
    """Add, remove and list the tags of a version (`ls --tag TAG` lists the versions)."""


@tag_group.command("add")
@click.argument("ref")
@click.argument("tag")
@JSON
@handle_errors
def add(ref: str, tag: str, as_json: bool) -> None:
    """Tag the version REF resolves to with TAG ([a-z0-9][a-z0-9._-], 64 at most)."""
    with open_registry() as registry:
        change = registry.add_tag(ref, tag)
    if as_json:
        print_json(wire.TagChange.of(change))
    elif change.changed:
        stdout.print(f"tagged {change.tag.ref} {change.tag.tag}")
    else:
        stdout.print(f"unchanged: {change.tag.ref} already has tag {change.tag.tag}")


@tag_group.command("rm")
@click.argument("ref")
@click.argument("tag")
@JSON
@handle_errors
def remove(ref: str, tag: str, as_json: bool) -> None:
    """Remove TAG from the version REF resolves to."""
    with open_registry() as registry:
        change = registry.remove_tag(ref, tag)
    if as_json:
        print_json(wire.TagChange.of(change))
    else:
        stdout.print(f"removed tag {change.tag.tag} from {change.tag.ref}")


@tag_group.command("ls")
@click.argument("ref")
@JSON
@handle_errors
def list_(ref: str, as_json: bool) -> None:
    """The tags of the version REF resolves to: who added each, when."""
    with open_registry() as registry:
        found = registry.tags(ref)
    if as_json:
        print_json([wire.Tag.of(t) for t in found])
        return
    if not found:
        stdout.print(f"{ref} has no tags: model-registry tag add {ref} TAG")
        return
    listing = table("tag", "version", "added (UTC)", "by")
    for t in found:
        listing.add_row(t.tag, t.ref, t.added_at.strftime("%Y-%m-%d %H:%M"), t.added_by)
    print_table(listing)


def register(group: click.Group) -> None:
    group.add_command(tag_group)
