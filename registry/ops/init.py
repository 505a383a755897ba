"""Creating a registry: its home, keys, catalog and the claims on its stores, or checking and
upgrading one that exists. An init that fails leaves nothing it made behind; one that stopped
while claiming stores is finished by running it again."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from registry.blobstore import store_owner
from registry.catalog.db import check_new_catalog, drop_catalog
from registry.config import (
    CONFIG_FILE,
    ENV_CATALOG_URL,
    PRIMARY,
    KmsSettings,
    RegionSettings,
    check_regions,
    default_actor,
    default_home,
    load_settings,
    parse_region,
    render_config,
    write_atomically,
)
from registry.crypto.keys import create_key_file
from registry.crypto.signing import Signer, public_key_text
from registry.errors import ConfigurationError, InvalidInputError, RegistryError
from registry.fileio import private_dirs
from registry.ops import journaling
from registry.ops.context import Context
from registry.ops.copies import regions_ready
from registry.ops.home import close, open_home
from registry.reports import InitResult
from registry.roles import ADMIN
from registry.storage.deadline import DeadlineSettings
from registry.storage.factory import StoreSpec, open_driver, prepare_bucket

log = logging.getLogger("model_registry")

# Left in a home by an init that stopped after it began claiming the stores: its registry id.
UNFINISHED_INIT = ".init-unfinished"


class _Made:
    """What an init made so far, undone if it fails, touching nothing it did not make: files
    are removed one by one, directories only while empty (another init may have finished in
    them meanwhile), and nothing at all from a home that another init completed. Once stores
    were being claimed, the keys and the registry id are kept instead (UNFINISHED_INIT), so
    the same command run again finishes with the stores it already claimed."""

    def __init__(self, home: Path, registry_id: str) -> None:
        self._home = home
        self._registry_id = registry_id
        self._files: list[Path] = []
        self._directories: list[Path] = []
        self._catalog: str | None = None
        self._claiming = False

    def directory(self, path: Path) -> None:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        private_dirs(path)
        self._directories.extend(reversed(missing))

    def file(self, path: Path) -> None:
        self._files.append(path)

    def catalog(self, url: str) -> None:
        self._catalog = url

    def claiming(self) -> None:
        self._claiming = True

    def undo(self) -> None:
        if (self._home / CONFIG_FILE).exists():
            # Another init of this home finished meanwhile: what is here is its registry.
            for path in self._files:
                if path.name.endswith(".pending"):
                    path.unlink(missing_ok=True)
            return
        if self._catalog is not None:
            with contextlib.suppress(RegistryError):
                drop_catalog(self._catalog)
        if self._claiming:
            with contextlib.suppress(OSError):
                write_atomically(self._home / UNFINISHED_INIT, self._registry_id + "\n")
            log.warning(
                "init stopped after it began claiming the stores; run the same command again "
                "to finish it (it takes up registry %s and the keys in place)",
                self._registry_id,
            )
            for path in self._files:
                if path.name.endswith(".pending"):
                    path.unlink(missing_ok=True)
            return
        for path in reversed(self._files):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        for directory in reversed(self._directories):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only while empty


def init(
    home: str | Path | None = None,
    *,
    catalog_url: str | None = None,
    store: str | Path | Sequence[str | Path] | None = None,
    key_dir: str | Path | None = None,
    kms: KmsSettings | None = None,
    write_quorum: int | None = None,
) -> InitResult:
    """Create a registry in `home`, or check and upgrade the one there (idempotent).

    `store` is a directory (default HOME/store) or an `s3://BUCKET[/PREFIX]?...` URL, or a
    list of them: one region each, in read preference order (see `config.parse_region`). An
    S3 bucket is created with versioning and Object Lock, or refused when it has no Object
    Lock. Keys are created first and never replaced; config.toml is written last, so an init
    that was interrupted simply runs again.
    """
    home_path = (Path(home) if home is not None else default_home()).expanduser().absolute()
    if (home_path / CONFIG_FILE).exists():
        if catalog_url or store or key_dir or kms or write_quorum is not None:
            raise ConfigurationError(
                f"{home_path} is already initialised; options apply only to a new registry",
                hint=f"edit {home_path / CONFIG_FILE} to change settings",
            )
        return _check_existing(home_path)
    stores = [store] if isinstance(store, (str, Path)) else list(store or [])
    regions = tuple(
        parse_region(str(text), index=index, count=len(stores)) for index, text in enumerate(stores)
    ) or (RegionSettings(PRIMARY, StoreSpec(path=home_path / "store")),)
    if kms is not None:
        if len(regions) > 1:
            raise InvalidInputError(
                "--kms-key names one KMS key, but there are several regions",
                hint="give each region its own key: kms=KEY in its --store URL",
            )
        regions = (dataclasses.replace(regions[0], kms=kms),)
    check_regions(regions, write_quorum=write_quorum)
    keys = Path(key_dir).expanduser().absolute() if key_dir else home_path / "keys"
    for settings in regions:
        path = settings.store.path
        if path is not None and (
            keys == path or keys.is_relative_to(path) or path.is_relative_to(keys)
        ):
            raise InvalidInputError(
                f"the key directory {keys} and the store {path} must be apart",
                hint="keys must never live beside the data they protect (design invariant 5)",
            )
    url = catalog_url or f"sqlite:///{home_path / 'catalog.db'}"
    # The catalog is made where the environment says, as every command will open it.
    effective_url = os.environ.get(ENV_CATALOG_URL) or url
    # An init that stopped after claiming stores left its registry id: it is taken up
    # again, so the stores it claimed are its own.
    unfinished = home_path / UNFINISHED_INIT
    registry_id = (
        unfinished.read_text().strip() if unfinished.is_file() else f"mr-{uuid.uuid4().hex}"
    )
    # Refusals come before anything is made: a catalog or a store that belongs to another
    # registry is left exactly as it was, and no home is left behind.
    check_new_catalog(effective_url)
    deadlines = DeadlineSettings()
    for settings in regions:
        driver = open_driver(settings.store, parallelism=1, deadlines=deadlines)
        try:
            owner = store_owner(driver)
        finally:
            driver.close()
        if owner is not None and owner != registry_id:
            raise ConfigurationError(
                f"the store {settings.store.describe()} belongs to registry {owner}",
                hint="each registry needs its own store; a new registry never writes into "
                "another's",
            )
    return _make(home_path, registry_id, regions, keys, url, effective_url, write_quorum)


def init_result(ctx: Context, *, created: bool) -> InitResult:
    return InitResult(
        home=ctx.settings.home,
        created=created,
        registry_id=ctx.settings.registry_id,
        catalog_url=ctx.settings.catalog_url,
        store="; ".join(
            region.store.describe()
            if len(ctx.settings.regions) == 1
            else f"{region.name}: {region.store.describe()}"
            for region in ctx.settings.regions
        ),
        keys=ctx.settings.describe_keys(),
        public_key=public_key_text(ctx.signer.public_key),
    )


def _check_existing(home_path: Path) -> InitResult:
    """An init of a registry that exists: its stores are claimed (again), nothing else."""
    ctx = Context(open_home(load_settings(home_path)), actor=default_actor(), role=ADMIN)
    try:
        regions_ready(ctx)
        for region in ctx.replicas.regions:
            if not ctx.replicas.is_down(region):
                region.store.claim()
        return init_result(ctx, created=False)
    finally:
        close(ctx)


def _make(
    home_path: Path,
    registry_id: str,
    regions: tuple[RegionSettings, ...],
    keys: Path,
    url: str,
    effective_url: str,
    write_quorum: int | None,
) -> InitResult:
    """Make the home, the keys, the catalog and the stores' claims, undoing what it made when
    it fails."""
    deadlines = DeadlineSettings()
    unfinished = home_path / UNFINISHED_INIT
    made = _Made(home_path, registry_id)
    try:
        made.directory(home_path)
        for settings in regions:
            prepare_bucket(settings.store, deadlines=deadlines)
        made.directory(keys)
        kek_file, naming_file, signing_file = (
            keys / "kek.key",
            keys / "naming.key",
            keys / "signing.key",
        )
        needs_kek = any(region.kms is None for region in regions)
        if needs_kek and not kek_file.exists():
            create_key_file(kek_file)
            made.file(kek_file)
        if not naming_file.exists():
            create_key_file(naming_file, label="naming key")
            made.file(naming_file)
        if signing_file.exists():
            signer = Signer.from_file(signing_file)
        else:
            signer = Signer.create(signing_file)
            made.file(signing_file)
        text = render_config(
            registry_id=registry_id,
            catalog_url=url,
            regions=regions,
            kek_file=str(kek_file) if needs_kek else None,
            naming_key_file=str(naming_file),
            signing_key_file=str(signing_file),
            trusted_signers=[("local", public_key_text(signer.public_key))],
            write_quorum=write_quorum,
        )
        # The configuration becomes config.toml only once the catalog was made and the
        # stores claimed with it: a failed init leaves no half-configured home, and runs
        # again with corrected options.
        pending = home_path / f".{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.pending"
        write_atomically(pending, text)
        made.file(pending)
        pending_settings = load_settings(home_path, config_file=pending)
        ctx = Context(
            open_home(pending_settings, create_catalog=True), actor=default_actor(), role=ADMIN
        )
        made.catalog(effective_url)
        try:
            made.claiming()
            for region in ctx.replicas.regions:
                region.store.claim()
            ctx.catalog.audit(ctx.actor, "init", "registry", {"home": str(home_path)})
            journaling.drain_journal(ctx)
            result = init_result(ctx, created=True)
        finally:
            close(ctx)
        os.replace(pending, home_path / CONFIG_FILE)
        unfinished.unlink(missing_ok=True)
    except BaseException:
        made.undo()
        raise
    return result
