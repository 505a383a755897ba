"""`push`, `pull`, `ls`, `show`, `verify`: the commands about models and their versions."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.ui import (
    digest_prefix,
    handle_errors,
    human_size,
    open_registry,
    print_json,
    print_table,
    progress_bar,
    read_small,
    stdout,
    table,
    warn_read_around,
    when,
)
from registry import wire
from registry.errors import (
    REPUSH_HINT,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    StorageError,
)

if TYPE_CHECKING:
    from registry.client import RegistrySurface
    from registry.manifest import ManifestFile
    from registry.provenance import Provenance
    from registry.records import ModelRecord
    from registry.reports import VersionDetails

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def _rate(size: int, seconds: float) -> str:
    return f"{human_size(int(size / seconds))}/s" if seconds > 0 else "-"


@click.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--message", "-m", default="", help="Why this version exists (kept in the catalog).")
@click.option(
    "--write-quorum",
    type=click.IntRange(min=1),
    help="Regions that must hold a verified copy (default: the configured quorum, else all).",
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Store what symbolic links leading outside PATH point at (refused otherwise).",
)
@click.option(
    "--meta", multiple=True, metavar="KEY=VALUE", help="Metadata, signed with the version."
)
@click.option("--source-repo", metavar="URL", help="The repository the model was made from.")
@click.option("--source-commit", metavar="SHA", help="The commit it was made at.")
@click.option("--run-url", metavar="URL", help="The CI or training run that made it.")
@click.option(
    "--base-model", metavar="REF", help="The version it was made from (pinned by digest)."
)
@click.option(
    "--dataset", "datasets", multiple=True, metavar="NAME@DIGEST", help="A dataset it used."
)
@click.option(
    "--signature",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An OpenSSF model signature of the files (default: PATH/model.sig when present).",
)
@JSON
@QUIET
@handle_errors
def push(
    name: str,
    path: Path,
    message: str,
    write_quorum: int | None,
    follow_symlinks: bool,
    meta: tuple[str, ...],
    source_repo: str | None,
    source_commit: str | None,
    run_url: str | None,
    base_model: str | None,
    datasets: tuple[str, ...],
    signature: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Push the model in PATH (a directory or one .safetensors file) as a new version of NAME.

    Metadata and lineage (--meta, --source-*, --run-url, --base-model, --dataset) are signed
    with the version and never change; tags (`model-registry tag`) can. An OpenSSF model
    signature (model.sig) is checked against the files and the trusted OpenSSF signers, and its
    signer recorded with the version (docs/provenance.md)."""
    from registry.provenance import ProvenanceRequest, parse_dataset, parse_meta

    provenance = ProvenanceRequest(
        parse_meta(list(meta)),
        source_repo,
        source_commit,
        run_url,
        base_model,
        tuple(parse_dataset(text) for text in datasets),
    )
    signed = None if signature is None else read_small(signature, what="signature")
    started = time.perf_counter()
    bar = progress_bar(as_json=as_json, quiet=quiet)
    with open_registry() as registry:
        try:
            result = registry.push(
                name,
                path,
                message=message,
                write_quorum=write_quorum,
                progress=bar,
                follow_symlinks=follow_symlinks,
                provenance=provenance,
                signature=signed,
            )
        finally:
            bar.close()
    for region in result.pending_regions:
        click.echo(
            f"warning: region {region} did not get every copy; queued for "
            "`model-registry replicate`",
            err=True,
        )
    seconds = time.perf_counter() - started
    version = result.version
    if as_json:
        print_json(wire.PushResult.of(result), seconds=round(seconds, 3))
        return
    if not result.created:
        stdout.print(f"unchanged: identical content is already {version.ref}  {version.digest}")
        if result.uploaded_bytes:
            stdout.print(
                f"  restored {human_size(result.uploaded_bytes)} that was missing or damaged in "
                "the store"
            )
        return
    stdout.print(f"pushed {version.ref}  {version.digest}")
    stdout.print(
        f"  {result.files} files, {human_size(version.total_size)}: uploaded "
        f"{human_size(result.uploaded_bytes)}, reused {human_size(result.reused_bytes)} "
        f"in {seconds:.1f} s ({_rate(version.total_size, seconds)})"
    )


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files in DEST that hold other content.")
@click.option(
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="Only the files matching PATTERN ('*.json', 'tokenizer/*'); repeatable.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave out the files matching PATTERN; repeatable.",
)
@click.option(
    "--signature",
    "signed",
    is_flag=True,
    help="Also write DEST/model.sig: an OpenSSF model signature of the files, by this "
    "registry's OpenSSF key (docs/provenance.md).",
)
@JSON
@QUIET
@handle_errors
def pull(
    ref: str,
    dest: Path,
    force: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    signed: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write the files of REF into DEST, each verified before it appears under its final name.
    Files already in DEST with the right content are kept; run again, an interrupted pull
    goes on from the files it had verified."""
    if signed and (include or exclude):
        raise InvalidInputError(
            "--signature signs every file of the version: it does not go with --include or "
            "--exclude (a verifier would refuse the partial folder)"
        )
    started = time.perf_counter()
    bar = progress_bar(as_json=as_json, quiet=quiet)
    with open_registry() as registry:
        signature = None
        if signed:
            # The version is pinned first: an alias that moves meanwhile cannot make the
            # signature and the files disagree.
            ref = registry.resolve(ref).ref
            signature = registry.openssf_signature(ref)
        try:
            result = registry.pull(
                ref, dest, force=force, include=include, exclude=exclude, progress=bar
            )
        finally:
            bar.close()
    signed_file = None
    if signature is not None:
        signed_file = write_signature(result.destination, signature)
    warn_read_around(result.bad_copies)
    seconds = time.perf_counter() - started
    if as_json:
        extra = {} if signed_file is None else {"signature": str(signed_file)}
        print_json(wire.PullResult.of(result), seconds=round(seconds, 3), **extra)
        return
    if signed_file is not None:
        stdout.print(f"wrote {signed_file}: an OpenSSF model signature of the files")
    where = str(result.destination)
    if not result.files:
        stdout.print(
            f"up to date: {result.version.ref}  {result.version.digest}  -> {where}: "
            f"{len(result.unchanged)} files already there, verified"
        )
        return
    stdout.print(f"pulled {result.version.ref}  {result.version.digest}  -> {where}")
    stdout.print(
        f"  {len(result.files)} files, {human_size(result.bytes)} verified in {seconds:.1f} s "
        f"({_rate(result.bytes, seconds)})"
        + (f"; {len(result.unchanged)} files already there" if result.unchanged else "")
    )


def _print_models(models: list[ModelRecord], *, as_json: bool) -> None:
    if as_json:
        print_json([wire.Model.of(m) for m in models])
        return
    if not models:
        stdout.print("no models yet: model-registry push NAME PATH")
        return
    found = table("model", "versions", "latest", "size", "stored", "created (UTC)")
    for m in models:
        found.add_row(
            m.name,
            str(m.version_count),
            f"@{m.latest}" if m.latest else "-",
            human_size(m.total_size),
            human_size(m.stored_size),
            m.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    print_table(found)


@click.command("ls")
@click.argument("name", required=False)
@click.option(
    "--expired", is_flag=True, help="With NAME: list expired and deleted versions (tombstones) too."
)
@click.option("--tag", metavar="TAG", help="Only the versions tagged TAG (of NAME, or of all).")
@JSON
@handle_errors
def list_(name: str | None, expired: bool, tag: str | None, as_json: bool) -> None:
    """List models, or the versions of NAME; with --tag, the versions tagged TAG."""
    with open_registry() as registry:
        if tag is not None:
            versions = registry.tagged(tag, name=name, expired=expired)
        elif name is not None:
            versions = registry.versions(name, expired=expired)
        else:
            _print_models(registry.models(), as_json=as_json)
            return
    if as_json:
        print_json([wire.Version.of(v) for v in versions])
        return
    if tag is not None and not versions:
        stdout.print(f"no version{f' of {name}' if name else ''} is tagged {tag}")
        return
    # The file count is left to `show`: the message keeps room to be read in 80 columns.
    whole = ("version", "blake3", "size", "created (UTC)", "by")
    found = table(*whole, *(("state",) if expired else ()), wide=("message",))
    for v in versions:
        row = [
            v.ref,
            digest_prefix(v.digest),
            human_size(v.total_size),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.created_by,
        ]
        if expired:
            gone = "deleted" if (v.expiry_reason or "").startswith("deleted") else "expired"
            row.append("live" if v.expired_at is None else f"{gone} {v.expired_at:%Y-%m-%d}")
        found.add_row(*row, v.message)
    print_table(found)


@click.command()
@click.argument("ref")
@click.option("--digests", is_flag=True, help="Print each file's whole digest, not a prefix.")
@click.option("--card", is_flag=True, help="Print the model card (README.md) as it was pushed.")
@JSON
@handle_errors
def show(ref: str, digests: bool, card: bool, as_json: bool) -> None:
    """Show a version: files, sizes, tensors, dtypes, parameters, digest, tags, who made it and
    when; with --card, its model card."""
    with open_registry() as registry:
        details = registry.show(ref)
        if card:
            _card(registry, details.version.ref, details.manifest.files, as_json=as_json)
            return
        chain = [] if as_json else ancestors(registry, details)
    version, manifest = details.version, details.manifest
    if as_json:
        # One JSON shape for a version, whoever prints it: the chain is the manifests' own
        # `provenance.base_model`, followed; the text output walks it.
        print_json(wire.VersionDetails.of(details))
        return
    stdout.print(f"{version.ref}  {version.digest}")
    stdout.print(f"  created    {when(version.created_at)} by {version.created_by}")
    stdout.print(f"  signed by  {details.signer}")
    if version.message:
        stdout.print(f"  message    {version.message}")
    if details.tags:
        stdout.print(f"  tags       {', '.join(details.tags)}")
    stdout.print(
        f"  size       {human_size(version.total_size)} in {version.file_count} files; "
        f"{version.tensor_count} tensors, {version.parameter_count:,} parameters, "
        f"dtypes {', '.join(version.dtypes) or '-'}"
    )
    print_provenance(manifest.provenance, chain)
    found = table("file", "size", "tensors", "digest")
    for entry in manifest.files:
        tensors = "-" if entry.safetensors is None else str(len(entry.safetensors.tensors))
        digest = entry.digest if digests else "blake3:" + digest_prefix(entry.digest)
        found.add_row(entry.path, human_size(entry.size), tensors, digest)
    print_table(found)


def write_signature(folder: Path, signature: bytes) -> Path:
    """`folder/model.sig`, replaced whole (each signature differs: ECDSA draws a nonce)."""
    target = folder / "model.sig"
    temporary = folder / f".model.sig.{os.getpid()}.tmp"
    try:
        temporary.write_bytes(signature)
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"cannot write {target}: {error.strerror}") from None
    return target


def ancestors(registry: RegistrySurface, details: VersionDetails) -> list[tuple[bool, str]]:
    """The chain of base models from `details` back, each as (found, line): the pinned base
    read and its digest compared, until a version without a base (at most 32 steps, a loop
    cut). A base that expired, moved out of reach or differs is said, and ends the chain."""
    chain: list[tuple[bool, str]] = []
    seen = {details.version.digest}
    provenance = details.manifest.provenance
    while provenance is not None and provenance.base_model is not None and len(chain) < 32:
        base = provenance.base_model
        try:
            found = registry.show(base.ref)
        except RegistryError as error:
            chain.append((False, f"{base.ref} {base.digest}: {error.message}"))
            break
        if found.version.digest != base.digest:
            chain.append((False, f"{base.ref} {base.digest}: that version's digest differs"))
            break
        chain.append((True, f"{base.ref} {base.digest}"))
        if found.version.digest in seen:
            break
        seen.add(found.version.digest)
        provenance = found.manifest.provenance
    return chain


def print_provenance(provenance: Provenance | None, chain: list[tuple[bool, str]]) -> None:
    if provenance is None:
        return
    for key, value in provenance.meta:
        stdout.print(f"  meta       {key} = {value}")
    for label, stated in (
        ("source", provenance.source_repo),
        ("commit", provenance.source_commit),
        ("run", provenance.run_url),
    ):
        if stated is not None:
            stdout.print(f"  {label:<10} {stated}")
    for dataset in provenance.datasets:
        stdout.print(f"  dataset    {dataset.name} {dataset.digest}")
    if provenance.openssf is not None:
        signer = provenance.openssf
        issuer = f" ({signer.issuer})" if signer.issuer else ""
        stdout.print(f"  openssf    {signer.kind} {signer.identity}{issuer}")
        stdout.print(f"             bundle {signer.bundle}")
    for index, (found, line) in enumerate(chain):
        label = "base model" if index == 0 else ""
        stdout.print(f"  {label:<10} {'<- ' if index else ''}{line}" + ("" if found else " !"))


def _card(
    registry: RegistrySurface, ref: str, files: tuple[ManifestFile, ...], *, as_json: bool
) -> None:
    """Print the version's model card: its README.md at the root, whatever the case of the
    name (README.md itself first), decrypted and verified in memory, byte for byte as pushed."""
    named = sorted((f for f in files if f.path.lower() == "readme.md"), key=lambda f: f.path)
    entry = next((f for f in named if f.path == "README.md"), named[0] if named else None)
    if entry is None:
        raise NotFoundError(
            f"{ref} has no model card (no README.md at its root)",
            hint=f"`model-registry show {ref}` lists its files",
        )
    data = registry.read_small_file(ref, entry.path)
    if as_json:
        text = data.decode("utf-8", errors="replace")
        print_json(
            wire.ModelCard(
                ref=ref, path=entry.path, size=entry.size, digest=entry.digest, text=text
            )
        )
        return
    click.echo(data, nl=False)  # bytes: written as they are, never re-encoded or styled


@click.command()
@click.argument("ref", required=False)
@click.option(
    "--read-data", is_flag=True, help="Decrypt and re-hash every byte, not just presence."
)
@click.option("--all", "everything", is_flag=True, help="Scrub every object of every version.")
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    metavar="PERCENT",
    help="With --all: check a random share of the objects.",
)
@click.option("--region", metavar="NAME", help="With --all: only this region's copies.")
@JSON
@QUIET
@handle_errors
def verify(
    ref: str | None,
    read_data: bool,
    everything: bool,
    sample: float | None,
    region: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Check that every object of REF is present (and, with --read-data, intact); with --all,
    scrub the whole registry: every object in every region, and objects no catalog row knows."""
    if everything == (ref is not None):
        raise InvalidInputError("give a REF, or --all (not both)", hint="verify REF | verify --all")
    if not everything and (sample is not None or region is not None):
        raise InvalidInputError("--sample and --region go with --all")
    if everything:
        _scrub(read_data=read_data, sample=sample, region=region, as_json=as_json, quiet=quiet)
        return
    assert ref is not None
    started = time.perf_counter()
    bar = progress_bar(as_json=as_json, quiet=quiet)
    with open_registry() as registry:
        try:
            report = registry.verify(ref, read_data=read_data, progress=bar)
        finally:
            bar.close()
    if as_json:
        print_json(wire.VerifyReport.of(report), seconds=round(time.perf_counter() - started, 3))
    else:
        depth = "decrypted and re-hashed" if read_data else "present with the right sizes"
        if report.ok:
            stdout.print(f"ok: {report.version.ref}: all {report.checked_files} files {depth}")
        for problem in report.problems:
            click.echo(f"BAD {problem.path}: {problem.problem}", err=True)
        for region in report.unchecked:
            click.echo(f"warning: not checked: {region}", err=True)
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


def _scrub(
    *, read_data: bool, sample: float | None, region: str | None, as_json: bool, quiet: bool
) -> None:
    started = time.perf_counter()
    bar = progress_bar(as_json=as_json, quiet=quiet)
    # Works without the catalog too, from a region's journal: nothing is recorded then.
    with open_registry(recovery=True, region=region) as registry:
        recorded = registry.provisional is None
        try:
            report = registry.scrub(read_data=read_data, sample=sample, region=region, progress=bar)
        finally:
            bar.close()
    if as_json:
        print_json(wire.ScrubReport.of(report), seconds=round(time.perf_counter() - started, 3))
    else:
        depth = "decrypted and re-hashed" if read_data else "present, sized and keyed"
        share = f" (a {report.sampled:g}% sample)" if report.sampled is not None else ""
        verdict = "BAD" if report.problems else "incomplete" if report.unchecked else "ok"
        stdout.print(
            f"{verdict}: {report.objects} objects{share}, {report.copies} copies {depth}; "
            f"{len(report.problems)} bad, {len(report.orphans)} orphans"
        )
        for problem in report.problems:
            versions = ", ".join(problem.versions) or "no live version"
            click.echo(
                f"BAD {problem.region}: {problem.kind} {problem.name}: "
                f"{problem.problem} (breaks {versions})",
                err=True,
            )
        for orphan in report.orphans:
            click.echo(
                f"orphan {orphan.region}: {orphan.name} ({human_size(orphan.size)}, "
                f"written {orphan.modified:%Y-%m-%d %H:%M}Z)",
                err=True,
            )
        for name in report.unchecked:
            click.echo(f"warning: not checked, unreachable: {name}", err=True)
        if report.problems and recorded:
            if region is None and report.copies == report.objects and not report.sampled:
                # One copy of each object: one region, nothing to repair from.
                click.echo(
                    "the bad copies are recorded; with one region there is no good copy to "
                    f"repair them from: {REPUSH_HINT}",
                    err=True,
                )
            else:
                click.echo(
                    "the bad copies are recorded: `model-registry replicate --repair` replaces "
                    "them from a good copy in another region (where none holds one: "
                    f"{REPUSH_HINT})",
                    err=True,
                )
    if report.problems:
        sys.exit(IntegrityError.exit_code)
    if report.unchecked:
        sys.exit(StorageError.exit_code)


def register(group: click.Group) -> None:
    for command in (push, pull, list_, show, verify):
        group.add_command(command)
