"""The `model-registry` command: the click group and its commands, one module per noun."""

from __future__ import annotations

import os

import click

from cli import (
    aliases,
    api,
    audit,
    catalog,
    diff,
    drill,
    events,
    gc,
    holds,
    keys,
    kserve,
    policy,
    regions,
    registry_commands,
    retention,
    search,
    serving,
    tags,
    versions,
)
from registry import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="model-registry")
@click.option(
    "--url",
    metavar="URL",
    help="Work through the registry server at URL (default: MODEL_REGISTRY_URL; unset: the "
    "local home).",
)
@click.option("--token", metavar="TOKEN", help="API token (default: MODEL_REGISTRY_TOKEN).")
def main(url: str | None, token: str | None) -> None:
    """Immutable, encrypted, verified model artifact registry.

    References: NAME (newest), NAME@N, NAME@blake3:PREFIX (12+ hex), NAME:ALIAS.
    MODEL_REGISTRY_HOME chooses the registry home (default ~/.model-registry); with
    MODEL_REGISTRY_URL (or --url) and a token, commands work through a registry server.
    """
    # The commands read these where they open the registry (cli.ui.open_registry).
    if url is not None:
        os.environ["MODEL_REGISTRY_URL"] = url
    if token is not None:
        os.environ["MODEL_REGISTRY_TOKEN"] = token


registry_commands.register(main)
versions.register(main)
tags.register(main)
search.register(main)
diff.register(main)
serving.register(main)
kserve.register(main)
main.add_command(keys.keys)
regions.register(main)
drill.register(main)
catalog.register(main)
holds.register(main)
aliases.register(main)
audit.register(main)
retention.register(main)
policy.register(main)
events.register(main)
gc.register(main)
api.register(main)
