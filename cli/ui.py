"""CLI output: rich progress bars, tables, JSON, and errors mapped to exit codes.

Both consoles print text verbatim: rich markup and emoji codes are off, because what the
commands print is mostly names, paths, messages and patterns that users and file systems chose
(`[a-z0-9]`, `extra [x].txt`, `:thumbs_up:`). Styling is explicit, with `rich.text.Text`
(`styled`), never by markup in a string."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from registry import wire
from registry.errors import InvalidInputError, NotConfirmedError, RegistryError

if TYPE_CHECKING:
    from rich.progress import TaskID

    from registry.client import RegistrySurface

P = ParamSpec("P")
R = TypeVar("R")

stdout = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


def styled(text: str, style: str) -> Text:
    """`text` in `style`, verbatim (the consoles interpret no markup)."""
    return Text(text, style=style)


def table(*columns: str, wide: tuple[str, ...] = ()) -> Table:
    """A table whose `columns` are kept whole (names, references, ids, sizes, times: never
    wrapped or cut) and whose `wide` columns (free text: messages, reasons, details) take the
    width left and fold. No borders, two spaces between columns: a row is one line that fits 80
    columns with names of ordinary length, and `grep`, `awk` and `cut` read it."""
    result = Table(box=None, padding=(0, 2, 0, 0), pad_edge=False, header_style="bold")
    for column in columns:
        result.add_column(column, no_wrap=True)
    for column in wide:
        result.add_column(column, overflow="fold", min_width=max(len(column), 12))
    return result


def print_table(found: Table) -> None:
    """Print `found` on stdout. The columns kept whole are never cut: a table whose whole
    columns alone are wider than the console (a long model name) is printed wider than it rather
    than broken, which a terminal wraps but a file or a pipe keeps as one row per line."""
    needed = found._extra_width  # the borders: rich has no public measure
    padding = found.padding[1] + found.padding[3]
    needed -= 0 if found.pad_edge else padding
    for column in found.columns:
        if column.no_wrap:
            cells = [column.header, *column._cells]  # rich has no public list of cells
            needed += max(_width(cell) for cell in cells) + padding
        else:
            needed += (column.min_width or 1) + padding
    width = stdout.width
    stdout.width = max(width, needed)
    try:
        if stdout.is_terminal:
            stdout.print(found)
            return
        with stdout.capture() as captured:
            stdout.print(found)
    finally:
        stdout.width = width
    # Not a terminal (no styles): rows end where their text does, not in padding.
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _width(cell: object) -> int:
    from rich.cells import cell_len

    text = cell.plain if isinstance(cell, Text) else str(cell)
    return max((cell_len(line) for line in text.splitlines()), default=0)


def digest_prefix(digest: str, length: int = 12) -> str:
    """The first `length` hex digits of a `blake3:` digest and an ellipsis: enough to name a
    version (`NAME@blake3:PREFIX` takes 12 or more); `show --digests` prints them whole."""
    return digest.removeprefix("blake3:")[:length] + "…"


class ProgressBar:
    """A `registry.service.Progress` drawn with rich on stderr: bytes done, throughput, ETA."""

    def __init__(self, *, enabled: bool) -> None:
        # Imported here: only the commands that move data draw a bar.
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:>11}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            disable=not enabled,
            transient=False,
        )
        self._task: TaskID | None = None

    def begin(self, description: str, total: int) -> None:
        if self._task is None:
            self._progress.start()
        else:
            self._progress.update(self._task, visible=True)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def end(self) -> None:
        if self._task is not None:
            self._progress.refresh()

    def close(self) -> None:
        self._progress.stop()


def progress_bar(*, as_json: bool, quiet: bool) -> ProgressBar:
    return ProgressBar(enabled=not as_json and not quiet and stderr.is_terminal)


def read_small(path: Path, *, what: str, limit: int = 16 * 1024 * 1024) -> bytes:
    """A small file a command takes as input (a signature, a key): refused when larger than
    `limit` or unreadable, with a message that names it."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise InvalidInputError(f"cannot read the {what} {path}: {error.strerror}") from None
    if len(data) > limit:
        raise InvalidInputError(f"the {what} {path} is larger than {limit} bytes")
    return data


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def print_json(data: Any, **extra: Any) -> None:
    """One JSON document: a wire model (`registry.wire`) or a list of them, with `extra` keys
    the command adds to a model (its own timing)."""
    import msgspec  # only the commands' --json

    if isinstance(data, msgspec.Struct | list):
        data = wire.dump(data)
    if extra:
        data = {**data, **extra}
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def report_error(error: RegistryError, *, as_json: bool) -> None:
    if as_json:
        body = wire.dump(wire.Error.of(error.code, error.message, error.hint))
        click.echo(json.dumps(body, indent=2))
    stderr.print(Text.assemble(styled("error:", "bold red"), " ", error.message))
    if error.hint:
        stderr.print(Text.assemble(styled("hint:", "dim"), " ", error.hint))


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Map registry errors to a short message, a hint and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        try:
            return command(*args, **kwargs)
        except RegistryError as error:
            report_error(error, as_json=as_json)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            stderr.print("interrupted: nothing was committed")
            sys.exit(130)
        except click.exceptions.Abort:
            # click.confirm answered no (or Ctrl-C, or no terminal to ask on): the user's
            # choice, not a bug.
            declined = NotConfirmedError("not confirmed: nothing was changed")
            report_error(declined, as_json=as_json)
            sys.exit(declined.exit_code)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - last resort: never a bare traceback
            if os.environ.get("MODEL_REGISTRY_DEBUG"):
                traceback.print_exc()
            stderr.print(
                Text.assemble(
                    styled("unexpected error:", "bold red"),
                    f" {type(error).__name__}: {error}\n",
                    styled("hint:", "dim"),
                    " this is a bug; MODEL_REGISTRY_DEBUG=1 shows the traceback",
                )
            )
            sys.exit(1)

    return wrapper


def local_only(command: str) -> None:
    """Refuse `command` when the CLI works through a server: it administers this host's home
    (init, serve, API tokens), which the REST API does not offer."""
    if os.environ.get("MODEL_REGISTRY_URL"):
        from registry.client import NotOfferedError

        raise NotOfferedError(f"`model-registry {command}` is not available through the REST API")


def open_registry(
    *, recovery: bool = False, region: str | None = None, replay: bool = True
) -> RegistrySurface:
    """The registry the command works on: the server at MODEL_REGISTRY_URL (with
    MODEL_REGISTRY_TOKEN, or --url/--token), else the local home.

    `recovery`: a command that proves the stores (drill, verify --all, regions status, catalog
    journal) also works while the catalog is lost, from a stand-in replayed from `region`'s
    journal (`replay`), and says so on stderr."""
    url = os.environ.get("MODEL_REGISTRY_URL")
    if url:
        from registry.client import RemoteRegistry

        # The remote has every method the commands call; those the REST API does not offer
        # raise NotOfferedError ("run it on the registry server").
        return RemoteRegistry(url, os.environ.get("MODEL_REGISTRY_TOKEN", ""))
    from registry.service import Registry

    if not recovery:
        return Registry.open()
    registry = Registry.open_for_recovery(region=region, replay=replay)
    if registry.provisional is not None:
        stderr.print(
            Text.assemble(
                styled("the catalog is missing:", "yellow"),
                f" working from {registry.provisional}; nothing is recorded. Rebuild it with "
                "`model-registry catalog rebuild --from REGION`",
            )
        )
    return registry


def warn_read_around(bad_copies: tuple[str, ...] | list[str]) -> None:
    """Warn about the copies a read had to route around ("region: kind digest: detail"): one
    line per region that was unreachable or hung, one per damaged copy."""
    outages: dict[str, list[str]] = {}
    for line in bad_copies:
        region, _, rest = line.partition(": ")
        _what, _, detail = rest.partition(": ")
        if detail.startswith(("unreachable", "hung")):
            outages.setdefault(region, []).append(detail)
            continue
        click.echo(
            f"warning: read around a bad copy ({line}); "
            "`model-registry replicate --repair` fixes it",
            err=True,
        )
    for region, details in outages.items():
        click.echo(
            f"warning: region {region} was read around ({details[0]}); its {len(details)} "
            "copies are recorded as pending: `model-registry replicate` checks them once it "
            "is back",
            err=True,
        )
