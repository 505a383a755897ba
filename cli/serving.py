"""`prepare`: a version made ready for a serving engine (its small files and the pin in a
folder, the weights left to the loader; docs/serving.md)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.ui import handle_errors, human_size, open_registry, print_json, progress_bar, stdout
from registry import wire

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option(
    "--include",
    "include",
    multiple=True,
    metavar="PATTERN",
    help="Also write the files matching PATTERN (a glob on paths inside the version, e.g. "
    "'*.safetensors' for runtimes that can only read files: they are then plaintext on disk). "
    "Repeatable.",
)
@JSON
@QUIET
@handle_errors
def prepare(ref: str, dest: Path, include: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Write REF's small files (config, tokenizer, templates) into DEST, verified, with
    registry.json pinning the version it resolved to; the weights stay in the registry, streamed
    by the engine's loader (docs/serving.md). Running it again updates DEST in place."""
    from registry.prepared import PIN_NAME  # the sealed format's vocabulary: not for --help

    started = time.perf_counter()
    bar = progress_bar(as_json=as_json, quiet=quiet)
    with open_registry() as registry:
        try:
            result = registry.prepare(ref, dest, include=include, progress=bar)
        finally:
            bar.close()
    seconds = time.perf_counter() - started
    if as_json:
        print_json(wire.PrepareResult.of(result), seconds=round(seconds, 3))
        return
    pin = result.pin
    stdout.print(
        f"prepared {pin.ref}  {pin.digest}  -> {result.destination}",
        highlight=False,
    )
    stdout.print(
        f"  {len(result.written)} files written ({human_size(result.bytes)}), "
        f"{len(result.unchanged)} unchanged, {len(result.removed)} removed; {PIN_NAME} pins it",
        highlight=False,
    )
    streamed = sum(entry.size for entry in pin.streamed)
    stdout.print(
        f"  weights left to the loader: {len(pin.streamed)} files, {human_size(streamed)}",
        highlight=False,
    )
    if pin.withheld:
        shown = ", ".join(pin.withheld[:3])
        more = f" and {len(pin.withheld) - 3} more" if len(pin.withheld) > 3 else ""
        stdout.print(
            f"  withheld: {shown}{more} (weights the loader cannot stream; "
            "--include writes them in plaintext)",
            highlight=False,
        )


def register(group: click.Group) -> None:
    group.add_command(prepare)
