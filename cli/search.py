"""`search`: the versions whose model name, tags, metadata or message match a query, newest
first, each with what it matched."""

from __future__ import annotations

import click

from cli.ui import handle_errors, open_registry, print_json, print_table, stdout, table
from registry import wire
from registry.records import SearchMatch

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _said(match: SearchMatch) -> str:
    if match.field == "meta":
        return f"meta {match.key}={match.value}"
    return f"{match.field} {match.value}"


@click.command()
@click.argument("query")
@click.option("--model", metavar="PATTERN", help="Only models PATTERN names (a name, or 'org/*').")
@click.option(
    "--limit",
    type=click.IntRange(1, 500),
    default=50,
    show_default=True,
    help="At most this many versions, the newest.",
)
@JSON
@handle_errors
def search(query: str, model: str | None, limit: int, as_json: bool) -> None:
    """Find versions: QUERY is KEY=VALUE (metadata holding exactly that, e.g.
    base_model=meta-llama/Llama-3.1-8B) or a word found in a model's name, a tag, a metadata
    key or value, or a version's message (any case). Newest first."""
    with open_registry() as registry:
        result = registry.search(query, model=model, limit=limit)
    if as_json:
        print_json(wire.SearchResult.of(result))
        return
    if not result.hits:
        stdout.print(f"no version matches {result.query}")
        return
    found = table("version", "created (UTC)", wide=("matched",))
    for hit in result.hits:
        found.add_row(
            hit.version.ref,
            hit.version.created_at.strftime("%Y-%m-%d %H:%M"),
            "; ".join(_said(m) for m in hit.matches),
        )
    print_table(found)
    if result.more:
        click.echo(
            f"more than {len(result.hits)} version{'' if len(result.hits) == 1 else 's'} "
            "match: narrow the search (--model) or raise --limit",
            err=True,
        )


def register(group: click.Group) -> None:
    group.add_command(search)
