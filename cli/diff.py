"""`diff`: what changed from one version to another: files reused and new bytes, tensors added,
removed, reshaped or retyped, config.json keys and metadata changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import click

from cli.ui import handle_errors, human_size, open_registry, print_json, stdout
from registry import wire

if TYPE_CHECKING:
    from registry.reports import VersionDiff  # `--help` and `ls` import no report

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _value(value: object) -> str:
    return "(absent)" if value is None else json.dumps(value, ensure_ascii=False)


def _changes(title: str, changes: Mapping[str, tuple[object, object]], *, raw: bool) -> None:
    if not changes:
        stdout.print(f"{title}: unchanged")
        return
    stdout.print(f"{title}: {len(changes)} key{'' if len(changes) == 1 else 's'} changed")
    for key, (a, b) in changes.items():
        shown = ["(absent)" if v is None else str(v) if raw else _value(v) for v in (a, b)]
        stdout.print(f"  {key}: {shown[0]} -> {shown[1]}")


def _print(diff: VersionDiff) -> None:
    stdout.print(f"{diff.a.ref} -> {diff.b.ref}")
    stdout.print(
        f"files: {len(diff.reused)} reused ({human_size(diff.reused_bytes)}), "
        f"{len(diff.added_files)} added, {len(diff.changed_files)} changed, "
        f"{len(diff.removed_files)} removed; {human_size(diff.new_bytes)} new"
    )
    for mark, paths in (
        ("+", diff.added_files),
        ("~", diff.changed_files),
        ("-", diff.removed_files),
    ):
        for path in paths:
            stdout.print(f"  {mark} {path}")
    stdout.print(
        f"tensors: {len(diff.tensors_added)} added, {len(diff.tensors_removed)} removed, "
        f"{len(diff.tensors_changed)} reshaped or retyped, {diff.tensors_same} unchanged"
    )
    for name in diff.tensors_added:
        stdout.print(f"  + {name}")
    for name in diff.tensors_removed:
        stdout.print(f"  - {name}")
    for change in diff.tensors_changed:
        before = f"{change.dtype[0]} {list(change.shape[0])}"
        after = f"{change.dtype[1]} {list(change.shape[1])}"
        stdout.print(f"  ~ {change.name}  {before} -> {after}")
    if diff.config_compared:
        _changes("config.json", diff.config_changes, raw=False)
    else:
        stdout.print("config.json: not compared")
    _changes("metadata", diff.meta_changes, raw=True)


@click.command()
@click.argument("a")
@click.argument("b")
@JSON
@handle_errors
def diff(a: str, b: str, as_json: bool) -> None:
    """What changed from version A to version B (two references; they may name two models):
    files B reuses and the bytes it adds, files and tensors added, removed or changed,
    config.json keys and metadata that differ."""
    with open_registry() as registry:
        found = registry.diff(a, b)
    if as_json:
        print_json(wire.VersionDiff.of(found))
    else:
        _print(found)


def register(group: click.Group) -> None:
    group.add_command(diff)
