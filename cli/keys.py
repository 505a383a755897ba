"""`model-registry keys ...`: the signing key and the trusted signers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.ui import handle_errors, open_registry, print_json, progress_bar, stdout
from registry import wire
from registry.errors import StorageError

if TYPE_CHECKING:
    from registry.reports import RegionKey


JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def keys() -> None:
    """Show keys and manage the signers whose manifests are trusted."""


def _key_line(key: RegionKey) -> str:
    if key.provider == "local":
        return f"local key file {key.key}  ({key.kek_id})"
    where = key.kms_region or ""
    if key.endpoint:
        where += f" via {key.endpoint}"
    return f"AWS KMS key {key.key} in {where}  ({key.kek_id})"


@keys.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def show(as_json: bool) -> None:
    """Print this home's signing public key, each region's key-encryption key (its KMS key or
    the local key file, and the keys a rotation is moving away from) and the trusted signers."""
    with open_registry() as registry:
        report = registry.key_report()
    if as_json:
        print_json(wire.Keys.of(report))
        return
    stdout.print(f"signing key   {report.signing_public_key}  (id {report.signing_key_id})")
    stdout.print("region keys:")
    width = max(len(key.region) for key in report.regions)
    for key in report.regions:
        stdout.print(f"  {key.region:<{width}}  {_key_line(key)}")
        for older, kek in key.previous:
            known = kek if kek else "file gone"
            stdout.print(f"  {'':<{width}}    previous {older}  ({known}), being rotated away")
    stdout.print("trusted signers:")
    for signer in report.trusted_signers:
        stdout.print(f"  {signer.name:<16} {signer.key_id}  {signer.public_key}")


@keys.command()
@click.argument("name")
@click.argument("public_key")
@JSON
@handle_errors
def trust(name: str, public_key: str, as_json: bool) -> None:
    """Trust manifests signed by PUBLIC_KEY (ed25519:BASE64), e.g. a CI signer's."""
    with open_registry() as registry:
        signer = registry.trust_signer(name, public_key)
    if as_json:
        print_json(
            wire.TrustedSigner(name=signer.name, key_id=signer.key_id, public_key=public_key)
        )
        return
    stdout.print(f"trusting {signer.name} ({signer.key_id})")


@keys.command()
@click.argument("name")
@JSON
@handle_errors
def untrust(name: str, as_json: bool) -> None:
    """Stop trusting the signer NAME (versions it signed will then fail verification)."""
    with open_registry() as registry:
        registry.untrust_signer(name)
    if as_json:
        print_json(wire.Untrusted(name=name))
        return
    stdout.print(f"no longer trusting {name}")


@keys.command("new-signing-key")
@JSON
@handle_errors
def new_signing_key(as_json: bool) -> None:
    """Create a new signing key for this home; the old one stays trusted."""
    with open_registry() as registry:
        text = registry.new_signing_key()
    if as_json:
        print_json(wire.SigningKey(public_key=text))
        return
    stdout.print(f"new signing key: {text}")
    stdout.print("trust it on other machines with: model-registry keys trust NAME " + text)


@keys.command()
@click.option(
    "--openssf",
    "target",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the public key of this registry's OpenSSF signer (PEM) to FILE ('-': stdout).",
)
@JSON
@handle_errors
def export(target: Path, as_json: bool) -> None:
    """Export the public key verifiers of `pull --signature`'s model.sig need:
    `model_signing verify key DIR --signature DIR/model.sig --public_key FILE`."""
    with open_registry() as registry:
        key = registry.openssf_public_key()
    pem, fingerprint = key.pem, key.fingerprint
    if str(target) == "-":
        click.echo(pem.decode(), nl=False)
        return
    try:
        target.write_bytes(pem)
    except OSError as error:
        raise StorageError(f"cannot write {target}: {error.strerror}") from None
    if as_json:
        print_json({"file": str(target), "fingerprint": fingerprint})
    else:
        stdout.print(f"wrote {target}: OpenSSF public key, fingerprint {fingerprint}")


@keys.command()
@click.option(
    "--to",
    "to",
    required=True,
    metavar="KEY",
    help="The new key-encryption key: a key file path (created when missing) or a KMS key id, "
    "ARN or alias.",
)
@click.option("--region", metavar="NAME", help="The region whose KMS key this replaces.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def rotate(to: str, region: str | None, as_json: bool, quiet: bool) -> None:
    """Re-wrap every data key under a new key-encryption key, then retire the old one.

    config.toml switches first (new objects use the new key; both keys open everything), each
    object then gets a key slot under the new key (no data is re-encrypted), and the old slots
    are retired. Interrupted, run the same command again: it resumes. When it has finished, the
    old key can be destroyed. Restart running servers once it has started."""
    bar = progress_bar(as_json=as_json, quiet=quiet)
    with open_registry() as registry:
        try:
            report = registry.rotate_keys(to, region=region, progress=bar)
        finally:
            bar.close()
    if as_json:
        print_json(wire.RotationReport.of(report))
        return
    if report.created_key_file:
        stdout.print(f"created key file {report.created_key_file} (back it up)")
    if not report.retired and not report.still_used:
        stdout.print(f"nothing to rotate: {', '.join(report.regions)} already use {report.to}")
        return
    stdout.print(
        f"rotated {', '.join(report.regions)} to {report.to}: {report.objects} objects, "
        f"{report.slots_written} key slots written; {report.catalog_slots_retired} old catalog "
        f"slots dropped, {report.old_slot_objects_deleted} old slot objects deleted, "
        f"{report.old_slot_objects_locked} kept under Object Lock, in {report.seconds:.2f} s"
    )
    if report.retired:
        stdout.print(f"the old key can now be destroyed: {', '.join(report.retired)}")
    for kek in report.still_used:
        stdout.print(f"keep {kek}: other regions still use it")
    if report.unrecoverable:
        click.echo(
            f"WARNING {report.unrecoverable} objects have slots only under a key whose file is "
            "gone: nothing opens them (their slots are kept, should the key file be found)",
            err=True,
        )
