"""Opening and closing a registry: the home an operation works on (catalog, regions, signer),
a stand-in home for the commands that prove the stores before a rebuild, and the rebuild of a
lost catalog itself."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from registry.catalog import lite
from registry.config import (
    KmsSettings,
    RegionSettings,
    Settings,
    default_actor,
    load_settings,
)
from registry.errors import (
    CatalogMissingError,
    ConfigurationError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
)
from registry.ops import sharedlimits
from registry.ops.context import Context, Home, OnFirstUse, note_unwrap

# What only some commands use (SQLAlchemy, the stores, the crypto) is imported where it is first
# used: `ls` and `show` start in a fraction of the time (docs/benchmarks.md, "CLI start-up").
if TYPE_CHECKING:
    from registry import rebuild
    from registry.catalog.repository import Catalog
    from registry.crypto.keys import KeyProvider
    from registry.crypto.signing import Signer
    from registry.ops.journaling import JournalRound
    from registry.replication import Region, ReplicaSet


log = logging.getLogger("model_registry.journal")  # registry.journal's, without importing it


def open_home(
    settings: Settings, *, create_catalog: bool = False, provisional: str | None = None
) -> Home:
    """Open the catalog and the regions of `settings`. The catalog must exist and be this
    registry's (`create_catalog`: init makes it). `provisional` names where a stand-in
    catalog came from (`open_for_recovery`): nothing is then journaled or changed.

    The naming key and the catalog are checked here, before anything else happens; what only
    some commands use is opened on their first use of it: the stores, the key-encryption key
    (its file, or a request to KMS), the signing key and, where the catalog is a SQLite file
    found as usual, SQLAlchemy (`catalog.lite` serves the reads of `ls` and `show` until then).
    Nothing is asked of the stores here either: the first use of a region checks that it is
    this registry's store (in the background for reads, which start at once)."""
    from registry.crypto.keys import read_key_file

    naming_key = read_key_file(settings.naming_key_file, label="naming key")
    # The key-encryption key is loaded (and a missing file refused) only when a command first
    # unwraps or wraps a key: what only reads the catalog (ls, show, history, alias ls, audit)
    # runs on a host that holds no key file at all.
    providers = OnFirstUse(lambda: _key_providers(settings))
    # A remote store is latency-bound: more requests in flight and larger ranges hide the
    # round trips (measured against boto3's own transfers, docs/benchmarks.md).
    remote = any(region.store.kind != "local" for region in settings.regions)
    workers = max(8, settings.effective_workers) if remote else settings.effective_workers
    chunks_per_read = 8 if remote else 4
    reads = (
        None
        if create_catalog
        else lite.open_reads(settings.catalog_url, registry_id=settings.registry_id)
    )
    catalog = OnFirstUse(lambda: _open_catalog(settings, providers, create=create_catalog))
    replicas: OnFirstUse[ReplicaSet] = OnFirstUse(
        lambda: _open_regions(
            settings, naming_key, providers.get(), workers=workers, chunks=chunks_per_read
        )
    )
    signer = OnFirstUse(lambda: _load_signer(settings))
    home = Home(
        settings=settings,
        opened_catalog=catalog,
        opened_replicas=replicas,
        opened_signer=signer,
        opened_journal_round=OnFirstUse(_journal_round),
        opened_counters=OnFirstUse(lambda: sharedlimits.open_store(settings, catalog)),
        chunks_per_read=chunks_per_read,
        lite=reads,
        provisional=provisional,
    )
    if create_catalog:
        # init opens everything, in the order it always did (keys, signer, catalog, regions):
        # a key that cannot be loaded leaves no catalog behind.
        providers.get()
        signer.get()
    if reads is None:
        # Not the usual SQLite catalog: the full checks (missing, empty, another registry's,
        # a migration due) run now, before anything else, as they always did.
        catalog.get()
    if create_catalog:
        try:
            replicas.get()
        except BaseException:
            catalog.get().close()
            raise
    return home


def _key_providers(settings: Settings) -> tuple[KeyProvider, ...]:
    local = local_keys(settings)
    return tuple(key_provider(region.kms, local) for region in settings.regions)


def _load_signer(settings: Settings) -> Signer:
    from registry.crypto.signing import Signer

    return Signer.from_file(settings.signing_key_file)


def _journal_round() -> JournalRound:
    from registry.ops.journaling import JournalRound

    return JournalRound()


def _open_catalog(
    settings: Settings, providers: OnFirstUse[tuple[KeyProvider, ...]], *, create: bool
) -> Catalog:
    """The catalog through SQLAlchemy, checked (and migrated) by `db.open_catalog_engine`."""
    from registry.catalog.db import open_catalog_engine
    from registry.catalog.repository import Catalog

    try:
        engine = open_catalog_engine(
            settings.catalog_url,
            registry_id=settings.registry_id,
            create=create,
            kek_ids=lambda: {kek for provider in providers.get() for kek in provider.kek_ids},
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
    return Catalog(engine)


def _open_regions(
    settings: Settings,
    naming_key: bytes,
    providers: tuple[KeyProvider, ...],
    *,
    workers: int,
    chunks: int,
) -> ReplicaSet:
    """Every region's store (opening asks nothing of them) and the replica set over them."""
    from registry.blobstore import BlobStore
    from registry.replication import Region, ReplicaSet
    from registry.storage.factory import open_driver

    several = len(settings.regions) > 1
    regions: list[Region] = []
    try:
        for region, provider in zip(settings.regions, providers, strict=True):
            driver = open_driver(
                region.store, parallelism=workers, fail_fast=several, deadlines=settings.deadlines
            )
            store = BlobStore(
                driver,
                provider,
                registry_id=settings.registry_id,
                naming_key=naming_key,
                chunk_size=settings.chunk_size,
                workers=workers,
                chunks_per_read=chunks,
                on_unwrap=note_unwrap,
            )
            regions.append(Region(region.name, store))
    except BaseException:
        for opened in regions:
            opened.store.driver.close()
        raise
    replicas = ReplicaSet(
        regions,
        workers=workers,
        deadlines=settings.deadlines,
        check_claim=lambda region: _check_claim(replicas, region),
    )
    return replicas


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
    from registry import rebuild
    from registry.catalog.db import open_catalog_engine

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
    from registry import rebuild

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
    from registry.crypto.keys import KeyRing, LocalKeyProvider

    if settings.kek_file is None:
        return None
    current = LocalKeyProvider.from_file(settings.kek_file)
    previous = []
    for path in settings.previous_kek_files:
        if not path.exists():
            # Destroyed before its rotation finished: what only it opens is lost, the rest is
            # not. `keys rotate` refuses while config.toml names it, and finishes once it is
            # dropped from there (reporting what nothing opens any more).
            log.warning("previous key file %s is gone", path)
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
    from registry.crypto.keys import KeyRing
    from registry.crypto.kms import KmsKeyProvider

    def provider(key: str) -> KeyProvider:
        return KmsKeyProvider(
            key, region=kms.region, endpoint_url=kms.endpoint_url, profile=kms.profile
        )

    current = provider(kms.key)
    return KeyRing(current, [provider(k) for k in kms.previous]) if kms.previous else current


def close(ctx: Context) -> None:
    """Close what the home opened (what it never needed was never opened)."""
    home = ctx.home
    if home.closed:
        return
    home.closed = True
    home.opened_catalog.settle()
    catalog = home.opened_catalog.value
    try:
        # What this handle wrote without a change to drain it (the audit of pulls, drills,
        # scrubs) reaches the stores now, not at the next change.
        if catalog is not None and catalog.journaled:
            from registry.ops import journaling

            journaling.drain_journal(ctx)
    except RegistryError as error:
        # Closing must close; the entries wait in the outbox.
        log.warning("the journal was not copied out at close: %s", error)
    except Exception:  # closing must close, whatever went wrong
        log.warning("the journal was not copied out at close", exc_info=True)
    finally:
        sharedlimits.close_store(home.opened_counters.value)
        if catalog is not None:
            catalog.close()
        if home.opened_replicas.value is not None:
            home.opened_replicas.value.close()
        if home.stand_in is not None:
            shutil.rmtree(home.stand_in, ignore_errors=True)
