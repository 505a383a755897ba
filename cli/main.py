"""The `model-registry` command: the click group and its commands, one module per noun."""

from __future__ import annotations

import click

from cli import (
    aliases,
    audit,
    events,
    gc,
    holds,
    keys,
    regions,
    registry_commands,
    retention,
    versions,
)
from registry import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="model-registry")
def main() -> None:
    """Immutable, encrypted, verified model artifact registry.

    References: NAME (newest), NAME@N, NAME@blake3:PREFIX (12+ hex), NAME:ALIAS.
    MODEL_REGISTRY_HOME chooses the registry home (default ~/.model-registry).
    """


registry_commands.register(main)
versions.register(main)
main.add_command(keys.keys)
regions.register(main)
holds.register(main)
aliases.register(main)
audit.register(main)
retention.register(main)
events.register(main)
gc.register(main)
