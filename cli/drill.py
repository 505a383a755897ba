"""`drill`: a restore drill from one region alone, timed and recorded."""

from __future__ import annotations

import sys

import click

from cli.ui import (
    handle_errors,
    human_size,
    open_registry,
    print_json,
    print_table,
    progress_bar,
    stdout,
    styled,
    table,
)
from registry import wire
from registry.errors import IntegrityError


@click.command()
@click.option("--region", metavar="NAME", help="Restore from this region (default: the last).")
@click.option(
    "--alias",
    default="production",
    show_default=True,
    help="The alias restored of each model (its newest version when it has none).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    metavar="N",
    help="Check N random chunks of each file (and its header) instead of every byte.",
)
@click.option("--all", "every_byte", is_flag=True, help="Every byte of every file (the default).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def drill(
    region: str | None,
    alias: str,
    sample: int | None,
    every_byte: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Prove the backups: as if every other region were gone, restore each model's alias from
    one region alone (manifests with that region's own key slots, every file decrypted and
    re-hashed, safetensors headers parsed), timed per model. Exit 6 if anything fails."""
    if sample is not None and every_byte:
        raise click.UsageError("--sample and --all exclude each other")
    bar = progress_bar(as_json=as_json, quiet=quiet)
    # Works without the catalog too (from the region's own journal): a region can be proven
    # before the catalog is rebuilt from it.
    with open_registry(recovery=True, region=region) as registry:
        try:
            report = registry.drill(region=region, alias=alias, sample=sample, progress=bar)
        finally:
            bar.close()
    if as_json:
        print_json(wire.DrillReport.of(report))
    else:
        found = table("model", "restored", "via", "files", "verified", "seconds", "result")
        for model in report.models:
            found.add_row(
                model.name,
                (model.ref or "-"),
                model.via,
                str(model.files),
                human_size(model.bytes),
                f"{model.seconds:.2f}",
                "ok" if model.ok else styled("FAILED", "red"),
            )
        print_table(found)
        verdict = "passed" if report.ok else "FAILED"
        stdout.print(
            f"drill from {report.region} ({report.mode}): {verdict} in {report.seconds:.2f} s "
            f"for {len(report.models)} model{'' if len(report.models) == 1 else 's'}"
        )
        for model in report.models:
            for problem in model.problems:
                click.echo(f"BAD {model.name}: {problem}", err=True)
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


def register(group: click.Group) -> None:
    group.add_command(drill)
