"""Opening and closing a registry: the home an operation works on (catalog, regions, signer),
a stand-in home for the commands that prove the stores before a rebuild, and the rebuild of a
lost catalog itself."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from registry import journal, rebuild
from registry.blobstore import BlobStore
from registry.catalog.db import open_catalog_engine
from registry.catalog.repository import Catalog
from registry.config import (
    KmsSettings,
    RegionSettings,
    Settings,
    default_actor,
    load_settings,
)
from registry.crypto.keys import (
    KeyProvider,
    KeyRing,
    LocalKeyProvider,
    read_key_file,
)
from registry.crypto.signing import (
    Signer,
)
from registry.errors import (
    CatalogMissingError,
    ConfigurationError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
)
from registry.ops import journaling
from registry.ops.context import Context, Home, note_unwrap
from registry.ops.journaling import JournalRound
from registry.replication import (
    Region,
    ReplicaSet,
)
from registry.storage.factory import open_driver


def open_home(
    settings: Settings, *, create_catalog: bool = False, provisional: str | None = None
) -> Home:
    """Open the catalog and the regions of `settings`. The catalog must exist and be this
    registry's (`create_catalog`: init makes it). `provisional` names where a stand-in
    catalog came from (`open_for_recovery`): nothing is then journaled or changed.

    Nothing is asked of the stores here: commands that need only the catalog never wait on a
    region. The first use of a region checks that it is this registry's store (in the
    background for reads, which start at once)."""
    naming_key = read_key_file(settings.naming_key_file, label="naming key")
    local = local_keys(settings)
    providers = [key_provider(region.kms, local) for region in settings.regions]
    signer = Signer.from_file(settings.signing_key_file)
    try:
        engine = open_catalog_engine(
            settings.catalog_url,
            registry_id=settings.registry_id,
            create=create_catalog,
            kek_ids={kek for provider in providers for kek in provider.kek_ids},
        )
    except CatalogMissingError as error:
        names = ", ".join(region.name for region in settings.regions)
        raise CatalogMissingError(
            f"{error.message}; this home ({settings.home}) belongs to registry "
            f"{settings.registry_id}, whose history the stores' journal holds: nothing was "
            "changed and no empty catalog was put in its place",
            hint=f"prove a region first (`model-registry drill --region REGION`, which works "
            f"from the stores alone), then `model-registry catalog rebuild --from REGION` "
            f"(regions: {names}); or restore the database and check catalog.url in "
            "config.toml",
        ) from None
    catalog = Catalog(engine)
    # A remote store is latency-bound: more requests in flight and larger ranges hide the
    # round trips (measured against boto3's own transfers, docs/benchmarks.md).
    remote = any(region.store.kind != "local" for region in settings.regions)
    workers = max(8, settings.effective_workers) if remote else settings.effective_workers
    chunks_per_read = 8 if remote else 4
    several = len(settings.regions) > 1
    regions: list[Region] = []
    try:
        for region, keys in zip(settings.regions, providers, strict=True):
            driver = open_driver(
                region.store, parallelism=workers, fail_fast=several, deadlines=settings.deadlines
            )
            store = BlobStore(
                driver,
                keys,
                registry_id=settings.registry_id,
                naming_key=naming_key,
                chunk_size=settings.chunk_size,
                workers=workers,
                chunks_per_read=chunks_per_read,
                on_unwrap=note_unwrap,
            )
            regions.append(Region(region.name, store))
    except BaseException:
        for opened in regions:
            opened.store.driver.close()
        catalog.close()
        raise
    replicas = ReplicaSet(
        regions,
        workers=workers,
        deadlines=settings.deadlines,
        check_claim=lambda region: _check_claim(replicas, region),
    )
    return Home(
        settings=settings,
        catalog=catalog,
        replicas=replicas,
        signer=signer,
        # Shared by every context over this home (one per API request), so a server compares
        # the journal every ten minutes, not on every request.
        journal_round=JournalRound(),
        chunks_per_read=chunks_per_read,
        provisional=provisional,
    )


def _check_claim(replicas: ReplicaSet, region: Region) -> None:
    """The region is this registry's store (its marker and naming key): run once per region
    in the background by the replica set. A region that cannot be reached is marked down."""
    try:
        region.store.check_claim()
    except KmsUnreachableError:
        if len(replicas.regions) == 1:
            raise
        # Its storage may well answer; its slots are tried after the other regions'.
    except StorageError as error:
        replicas.mark_down(region, error)
        raise


def open_for_recovery(
    settings: Settings,
    *,
    region: str | None = None,
    replay: bool = True,
    actor: str,
    on_progress: Callable[[str], None] | None = None,
) -> Home:
    """The home for the commands that prove the stores before a rebuild (drill, verify --all,
    regions status, catalog journal): its catalog when there is one, else a stand-in catalog
    in a temporary database, replayed from the journal of `region` (by default the region a
    rebuild would choose) when `replay`. A stand-in is read only: `provisional` says where it
    came from, nothing is journaled, and changes are refused. A catalog of another registry, or
    one behind the stores, is refused as usual."""
    try:
        return open_home(settings)
    except CatalogMissingError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="model-registry-stand-in-"))
    url = f"sqlite:///{workdir / 'catalog.db'}"
    local = local_keys(settings)

    def provider(entry: RegionSettings) -> KeyProvider:
        return key_provider(entry.kms, local)

    try:
        source = region
        if replay and source is None:
            source = rebuild.choose_source(settings, key_provider=provider)
            if source is None:
                raise CatalogMissingError(
                    "the catalog is missing and no reachable region holds a journal to work from",
                    hint="check the regions (`model-registry regions status`) and their "
                    "[store] settings in config.toml",
                )
        if replay and source is not None:
            report = rebuild.rebuild(
                settings,
                source=source,
                catalog_url=url,
                key_provider=provider,
                actor=actor,
                stand_in=True,
                on_progress=on_progress,
            )
            lacks = "".join(f"; {loss}" for loss in report.accepted_loss)
            note = f"region {source}'s journal ({report.entries} entries{lacks})"
        else:
            open_catalog_engine(url, registry_id=settings.registry_id, create=True).dispose()
            note = "the stores alone"
        home = open_home(dataclasses.replace(settings, catalog_url=url), provisional=note)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    home.stand_in = workdir
    return home


def rebuild_catalog(
    home: str | Path | None,
    *,
    source: str,
    catalog_url: str | None = None,
    actor: str | None = None,
    accept_loss: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> rebuild.RebuildReport:
    """Build a new catalog (default: the configured one, which must be gone or empty) from
    region `source` alone; see `registry.rebuild`. Needs config.toml and the key provider."""
    settings = load_settings(Path(home) if home is not None else None)
    local = local_keys(settings)
    return rebuild.rebuild(
        settings,
        source=source,
        catalog_url=catalog_url or settings.catalog_url,
        key_provider=lambda region: key_provider(region.kms, local),
        actor=actor or default_actor(),
        accept_loss=accept_loss,
        on_progress=on_progress,
    )


def local_keys(settings: Settings) -> KeyProvider | None:
    """The local key file's provider; during a rotation, a ring with the files it replaces."""
    if settings.kek_file is None:
        return None
    current = LocalKeyProvider.from_file(settings.kek_file)
    previous = []
    for path in settings.previous_kek_files:
        if not path.exists():
            # Destroyed before its rotation finished: what only it opens is lost, the rest is
            # not. `keys rotate` refuses while config.toml names it, and finishes once it is
            # dropped from there (reporting what nothing opens any more).
            journal.log.warning("previous key file %s is gone", path)
            continue
        previous.append(LocalKeyProvider.from_file(path))
    return KeyRing(current, previous) if previous else current


def key_provider(kms: KmsSettings | None, local: KeyProvider | None) -> KeyProvider:
    """A region's key provider: its KMS key, else the registry's local key file (with the keys
    a rotation is moving away from, which unwrap only)."""
    if kms is None:
        if local is None:
            raise ConfigurationError("a region without a KMS key needs keys.kek_file")
        return local
    from registry.crypto.kms import KmsKeyProvider

    def provider(key: str) -> KeyProvider:
        return KmsKeyProvider(
            key, region=kms.region, endpoint_url=kms.endpoint_url, profile=kms.profile
        )

    current = provider(kms.key)
    return KeyRing(current, [provider(k) for k in kms.previous]) if kms.previous else current


def close(ctx: Context) -> None:
    if ctx.home.closed:
        return
    ctx.home.closed = True
    try:
        # What this handle wrote without a change to drain it (the audit of pulls, drills,
        # scrubs) reaches the stores now, not at the next change.
        if ctx.catalog.journaled:
            journaling.drain_journal(ctx)
    except RegistryError as error:
        # Closing must close; the entries wait in the outbox.
        journal.log.warning("the journal was not copied out at close: %s", error)
    except Exception:  # noqa: BLE001 - closing must close, whatever went wrong
        journal.log.warning("the journal was not copied out at close", exc_info=True)
    finally:
        ctx.catalog.close()
        ctx.replicas.close()
        if ctx.home.stand_in is not None:
            shutil.rmtree(ctx.home.stand_in, ignore_errors=True)
