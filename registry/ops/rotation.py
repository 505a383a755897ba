"""Key rotation: move every object's key slot to a new key-encryption key, region by region,
then retire the old key's slots; resumable, and refusing while it would lose data.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from registry import wire
from registry.config import RegionSettings
from registry.crypto.keys import (
    KeyProvider,
    KeyRing,
    LocalKeyProvider,
    WrappedKey,
    create_key_file,
)
from registry.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    KeyAccessError,
    NotFoundError,
    RetentionError,
)
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import checkpoint, regions_ready
from registry.ops.home import key_provider, local_keys
from registry.ops.journaling import journaled
from registry.ops.signers import editing_config
from registry.replication import (
    Region,
)
from registry.reports import (
    RegionKey,
    RotationReport,
)
from registry.storage.lock import ObjectLock

# A bare KMS key id (a UUID), as `keys rotate --to` may be given one.
_KMS_KEY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@requires("read")
def region_keys(ctx: Context) -> tuple[RegionKey, ...]:
    """Each region's key-encryption key (its KMS key, else the local key file) and, during
    a rotation, the keys it is moving away from, in read preference order."""
    configured = {region.name: region for region in ctx.settings.regions}
    found: list[RegionKey] = []
    for region in ctx.replicas.regions:
        keys = region.store.keys
        older = keys.previous if isinstance(keys, KeyRing) else ()
        kms = configured[region.name].kms
        if kms is None:
            opened = {p.path: p.kek_id for p in older if isinstance(p, LocalKeyProvider) and p.path}
            found.append(
                RegionKey(
                    region.name,
                    "local",
                    keys.kek_id,
                    str(ctx.settings.kek_file),
                    previous=tuple(
                        (str(path), opened.get(path)) for path in ctx.settings.previous_kek_files
                    ),
                )
            )
            continue
        found.append(
            RegionKey(
                region.name,
                "aws-kms",
                keys.kek_id,
                kms.key,
                kms.region,
                kms.endpoint_url,
                tuple(
                    (key, provider.kek_id)
                    for key, provider in zip(kms.previous, older, strict=True)
                ),
            )
        )
    return tuple(found)


@requires("rotate-keys")
@journaled
def rotate_keys(
    ctx: Context, to: str, *, region: str | None = None, progress: Progress | None = None
) -> RotationReport:
    """Move every key slot of the regions under one key-encryption key to `to` (a key file
    path, created when missing, or a KMS key id/ARN/alias): config.toml switches first (new
    objects are wrapped by the new key, both keys unwrap), then every object gets a slot
    under the new key, then the old slots are retired and the old key leaves config.toml.
    No data is re-encrypted. Interrupted, it runs again from where it stopped."""
    regions_ready(ctx)
    missing = [str(p) for p in ctx.settings.previous_kek_files if not p.exists()]
    if missing:
        raise KeyAccessError(
            f"the rotation cannot finish: previous key file {', '.join(missing)} is gone, "
            "and objects whose only slot is under it cannot be re-wrapped",
            hint="restore the file from its backup and run `keys rotate` again; if it is lost "
            "for good, remove it from keys.previous_kek_files in config.toml (what only it "
            "opened stays unreadable)",
        )
    bar = progress or NoProgress()
    started = time.monotonic()
    targets, created = _start_rotation(ctx, to, region=region)
    names = tuple(r.name for r in targets)
    new_id = targets[0].store.keys.kek_id
    old_ids = _old_keys(ctx, targets, new_id)
    if not old_ids:
        return RotationReport(new_id, (), names, 0, 0, 0, 0, 0, created, 0.0)
    # A key another region still uses (one KMS key for two regions) keeps its slots there.
    still_used = sorted(
        {
            kek
            for r in ctx.replicas.regions
            if r.name not in names
            for kek in r.store.keys.kek_ids
            if kek in old_ids
        }
    )
    retiring = [k for k in old_ids if k not in still_used]
    rewrapped = 0
    done: set[tuple[str, str]] = set()
    unrecoverable: set[tuple[str, str]] = set()
    # Twice: once for everything, then, after the old keys are retired in the catalog (from
    # then on a commit carrying a slot under them fails, as from a process that still runs
    # on the old config.toml), once more for what such a process committed meanwhile.
    for retired_yet in (False, True):
        if retired_yet:
            ctx.catalog.retire_keys(retiring, actor=ctx.actor)
        pending = {
            key: slots
            for key, slots in ctx.catalog.slotted_objects().items()
            if any(slot.kek_id in old_ids for slot in slots)
        }
        bar.begin("adding key slots", len(pending))
        rewrapped += _rewrap(
            ctx, pending, targets, new_id, progress=bar, unrecoverable=unrecoverable
        )
        bar.end()
        done.update(pending)
    lacking = [
        key
        for key, slots in ctx.catalog.slotted_objects().items()
        if any(s.kek_id in old_ids for s in slots)
        and all(s.kek_id != new_id for s in slots)
        and key not in unrecoverable
    ]
    if lacking:
        raise ConflictError(
            f"{len(lacking)} objects still have no slot under the new key",
            hint="run `keys rotate` again; it resumes",
        )
    for target in targets:
        target.store.wrap_naming_key()
    # What no key opens any more keeps its old slots (in the catalog and the stores): they
    # are what a key file found again would open.
    moved = sorted(done - unrecoverable)
    deleted, kept = _retire_slot_objects(ctx, moved, targets, retiring)
    dropped = ctx.catalog.drop_key_slots(retiring, objects=moved)
    _finish_rotation(ctx, targets)
    report = RotationReport(
        new_id,
        tuple(retiring),
        names,
        len(done),
        rewrapped,
        dropped,
        deleted,
        kept,
        created,
        time.monotonic() - started,
        tuple(still_used),
        len(unrecoverable),
    )
    ctx.catalog.audit(
        ctx.actor, "key-rotate", "registry", wire.dump(wire.RotationReport.of(report))
    )
    return report


def _start_rotation(
    ctx: Context, to: str, *, region: str | None
) -> tuple[list[Region], str | None]:
    """The regions whose key `to` replaces, with config.toml (and the open stores) switched
    to it, the old key kept as a previous one; and the key file created, if one was."""
    kms_target = to.startswith(("arn:aws:kms:", "alias/", "kms:", "mrk-")) or bool(
        _KMS_KEY_ID.fullmatch(to)
    )
    chosen = _rotated_regions(ctx, to, region=region, kms_target=kms_target)
    created = None
    current = [r for r in ctx.replicas.regions if r.name in {c.name for c in chosen}]
    if kms_target:
        kms = chosen[0].kms
        assert kms is not None
        from registry.crypto.kms import KmsKeyProvider

        key = to.removeprefix("kms:")
        provider = KmsKeyProvider(
            key, region=kms.region, endpoint_url=kms.endpoint_url, profile=kms.profile
        )
        new_id = provider.kek_id
        if new_id != current[0].store.keys.kek_id:
            _probe_key(ctx, provider, what=f"KMS key {key}")
            # The key as its ARN: an alias may point elsewhere by the time it is needed.
            old_arn = current[0].store.keys.kek_id.removeprefix("aws-kms:")
            previous = tuple(dict.fromkeys((old_arn, *kms.previous)))
            regions = tuple(
                dataclasses.replace(
                    r,
                    kms=dataclasses.replace(
                        kms, key=key, previous=tuple(p for p in previous if p != key)
                    ),
                )
                if r.name == chosen[0].name
                else r
                for r in ctx.settings.regions
            )
            with editing_config(ctx):
                ctx.home.settings = dataclasses.replace(ctx.settings, regions=regions)
    else:
        new_id, created = _switch_key_file(ctx, to, current)
    # A key rotated away from once may be rotated back to: it wraps again from now on.
    ctx.catalog.unretire_key(new_id)
    _reload_keys(ctx)
    if any(r.store.keys.kek_id != new_id for r in current):
        raise ConfigurationError("config.toml did not take the new key", hint="check it")
    if any(len(r.store.keys.kek_ids) > 1 for r in current):
        ctx.catalog.audit(
            ctx.actor,
            "key-rotate-start",
            "registry",
            {"to": new_id, "regions": [r.name for r in current]},
        )
    return current, created


def _old_keys(ctx: Context, targets: Sequence[Region], new_id: str) -> list[str]:
    """The keys the rotation to `new_id` moves away from."""
    old_ids = {kek for r in targets for kek in r.store.keys.kek_ids if kek != new_id}
    if new_id.startswith("local:"):
        # A local key whose file is gone (dropped from previous_kek_files) is still one to
        # retire: its slots are in the catalog, and a process that still has it must not
        # write with it.
        recorded = {
            slot.kek_id for slots in ctx.catalog.slotted_objects().values() for slot in slots
        }
        retired_before = ctx.catalog.retired_keys()
        old_ids |= {
            k
            for k in recorded
            if k.startswith("local:") and k != new_id and k not in retired_before
        }
    return sorted(old_ids)


def _rotated_regions(
    ctx: Context, to: str, *, region: str | None, kms_target: bool
) -> list[RegionSettings]:
    """The regions whose key `to` replaces: the one KMS region named (or the only one), or
    every region on the local key file."""
    by_name = {r.name: r for r in ctx.settings.regions}
    if region is not None and region not in by_name:
        raise InvalidInputError(
            f"no region {region!r}", hint=f"regions: {', '.join(sorted(by_name))}"
        )
    if kms_target:
        kms_regions = [r for r in ctx.settings.regions if r.kms is not None]
        chosen = [by_name[region]] if region else kms_regions
        if not chosen or any(r.kms is None for r in chosen):
            raise InvalidInputError(
                f"--to {to} is a KMS key, but {region or 'no region'} does not use a KMS key",
                hint="a region on the local key file rotates to another key file",
            )
        if len(chosen) > 1:
            raise InvalidInputError(
                "KMS keys are regional: name the region whose key this replaces",
                hint=f"--region one of {', '.join(r.name for r in chosen)}",
            )
    else:
        if region is not None and by_name[region].kms is not None:
            raise InvalidInputError(
                f"region {region} uses a KMS key: --to must be a KMS key id, ARN or alias",
                hint="a key file path rotates the regions that use the local key file",
            )
        # The local key file is one for every region without a KMS key.
        chosen = [r for r in ctx.settings.regions if r.kms is None]
        if not chosen:
            raise InvalidInputError("no region uses the local key file", hint="--to a KMS key")
    return chosen


def _switch_key_file(ctx: Context, to: str, current: Sequence[Region]) -> tuple[str, str | None]:
    """config.toml switched to the key file `to` (created when missing), the old file kept as
    a previous one: the new key's id, and the file created, if it was."""
    created = None
    path = Path(to).expanduser().absolute()
    for other, label in (
        (ctx.settings.naming_key_file, "the naming key"),
        (ctx.settings.signing_key_file, "the signing key"),
    ):
        if path.exists() and other.exists() and path.samefile(other):
            raise InvalidInputError(
                f"{path} is {label}, not a key-encryption key",
                hint="give a new file name; `keys rotate` creates the key",
            )
    if not path.exists():
        try:
            create_key_file(path)
        except OSError as error:
            raise ConfigurationError(
                f"cannot create the key file {path}: {error}",
                hint="choose a directory this user can write, kept apart from the store",
            ) from None
        created = str(path)
    new_provider = LocalKeyProvider.from_file(path)
    new_id = new_provider.kek_id
    assert ctx.settings.kek_file is not None
    if new_id != current[0].store.keys.kek_id:
        old = [str(ctx.settings.kek_file), *map(str, ctx.settings.previous_kek_files)]
        with editing_config(ctx) as config:
            config["keys"]["kek_file"] = str(path)
            config["keys"]["previous_kek_files"] = [
                p for p in dict.fromkeys(old) if Path(p) != path
            ]
    return new_id, created


def _probe_key(ctx: Context, provider: KeyProvider, *, what: str) -> None:
    """Wrap and unwrap the naming key with a key before config.toml names it: a key that
    does not exist, is disabled or may not be used is refused with nothing changed."""
    context = {"registry": ctx.settings.registry_id, "purpose": "naming"}
    probe = os.urandom(32)
    try:
        if (
            provider.unwrap(provider.wrap(probe, context=context), context=context, what=what)
            != probe
        ):
            raise KeyAccessError(f"{what} does not give back what it wrapped")
    except KeyAccessError as error:
        raise KeyAccessError(
            f"{what} cannot be used: {error.message}",
            hint="check the key id, its state and this principal's permissions; nothing "
            "was changed",
        ) from None


def _reload_keys(ctx: Context) -> None:
    local = local_keys(ctx.settings)
    for region, configured in zip(ctx.replicas.regions, ctx.settings.regions, strict=True):
        region.store.keys = key_provider(configured.kms, local)


def _rewrap(
    ctx: Context,
    pending: Mapping[tuple[str, str], Sequence[WrappedKey]],
    targets: Sequence[Region],
    new_id: str,
    *,
    progress: Progress,
    unrecoverable: set[tuple[str, str]],
) -> int:
    """A slot under the new key in the catalog and in every target region for each object
    (already there: skipped, which is what makes a rerun resume). Returns slots written;
    objects no configured key opens any more (their key file was lost) go to
    `unrecoverable`, untouched."""
    written = 0
    batch: list[tuple[str, str, WrappedKey]] = []
    held = ctx.catalog.held_objects()
    for (digest, kind), slots in pending.items():
        what = f"{kind} {digest[:19]}"
        slot = next((s for s in slots if s.kek_id == new_id), None)
        if slot is None:
            # A new slot a run before this one wrote (the catalog did not hear of it).
            for target in targets:
                stored_slot = target.store.read_slot(kind, digest, what=what)
                if stored_slot is not None and stored_slot.kek_id == new_id:
                    slot = stored_slot
                    break
        try:
            # The data key from any slot any region's key opens: the old key, a new slot,
            # or another region's KMS key.
            data_key, _seen = ctx.replicas.unwrap_any(
                kind, digest, known=[*slots, *([slot] if slot else [])], what=what
            )
        except (KeyAccessError, IntegrityError):
            if slot is None:
                unrecoverable.add((digest, kind))
                progress.advance(1)
                continue
            raise
        for target in targets:
            store = target.store
            name = store.slot_name(kind, digest, new_id)
            if store.driver.stat(name) is not None:
                continue
            if slot is None:
                slot = store.keys.wrap(data_key, context=store.context(kind, digest))
            store.driver.put_if_absent(name, [slot.to_json()])
            written += 1
            if (digest, kind) in held and isinstance(store.driver, ObjectLock):
                # A held version's new slot is held like its old one.
                store.driver.set_legal_hold(name, True)
        if slot is not None and all(s.kek_id != new_id for s in slots):
            batch.append((digest, kind, slot))
        if len(batch) >= 200:
            ctx.catalog.add_key_slots(batch)
            batch = []
        progress.advance(1)
        checkpoint(ctx, "rotate-object")
    ctx.catalog.add_key_slots(batch)
    return written


def _retire_slot_objects(
    ctx: Context,
    objects: Iterable[tuple[str, str]],
    targets: Sequence[Region],
    old_ids: Sequence[str],
) -> tuple[int, int]:
    """Delete the old keys' slot objects (and wrapped naming keys) from the target stores;
    those Object Lock keeps stay, useless once the old key is destroyed. (deleted, kept)"""
    deleted = kept = 0
    for target in targets:
        store = target.store
        names = [store.slot_name(kind, digest, old) for digest, kind in objects for old in old_ids]
        names += [store.naming_key_name(old) for old in old_ids]
        driver = store.driver
        for name in names:
            try:
                if isinstance(driver, ObjectLock) and driver.legal_hold(name):
                    # The hold lives on in the object's new slot; an old slot under a
                    # hold nobody would ever release would only outlast its key.
                    driver.set_legal_hold(name, False)
                driver.delete(name)
                deleted += 1
            except NotFoundError:
                continue
            except RetentionError:
                kept += 1
    return deleted, kept


def _finish_rotation(ctx: Context, targets: Sequence[Region]) -> None:
    names = {r.name for r in targets}
    if any(r.kms is not None for r in ctx.settings.regions if r.name in names):
        regions = tuple(
            dataclasses.replace(r, kms=dataclasses.replace(r.kms, previous=()))
            if r.name in names and r.kms is not None
            else r
            for r in ctx.settings.regions
        )
        with editing_config(ctx):
            ctx.home.settings = dataclasses.replace(ctx.settings, regions=regions)
    else:
        with editing_config(ctx) as config:
            config["keys"].pop("previous_kek_files", None)
    _reload_keys(ctx)
