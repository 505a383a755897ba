"""The data key of an object across regions: found through the first slot any region opens,
chosen anew (its slot stored first-come) for an object no region holds yet, and each region's own
slot of it written, checked or replaced."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from registry.crypto.keys import WrappedKey
from registry.errors import (
    IntegrityError,
    KeyAccessError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
)
from registry.replication.regions import Region, Regions


class DataKeys(Regions):
    """The data keys of a replica set's objects."""

    def unwrap_any(
        self, kind: str, digest: str, *, known: Sequence[WrappedKey], what: str
    ) -> tuple[bytes, dict[str, WrappedKey]]:
        """The data key of an object from the first region whose slot opens it (the catalog's
        copy of the slot first, else the region's own), and the slots seen on the way (by
        key-encryption key id). A KMS that does not answer moves on to the next region; any
        other refusal is raised."""
        by_kek = {slot.kek_id: slot for slot in known}
        seen: dict[str, WrappedKey] = {}
        unreachable: list[KeyAccessError] = []
        deferred: list[tuple[Region, WrappedKey]] = []
        for region in self.regions:
            store = region.store
            slot = next((by_kek[k] for k in store.keys.kek_ids if k in by_kek), None)
            if slot is None and not self.is_down(region):
                try:
                    slot = store.read_slot(kind, digest, what=what)
                except StorageError as error:
                    self.mark_down(region, error)
            if slot is None:
                continue
            seen[slot.kek_id] = slot
            if self._kms_down(region):
                deferred.append((region, slot))
                continue
            try:
                return store.unwrap(kind, digest, slot, what=what), seen
            except KmsUnreachableError as error:
                self._mark_kms_down(region, error)
                unreachable.append(error)
        # A KMS that failed a moment ago is tried last, not never: it may be all there is.
        for region, slot in deferred:
            try:
                return region.store.unwrap(kind, digest, slot, what=what), seen
            except KmsUnreachableError as error:
                unreachable.append(error)
        if unreachable:
            raise unreachable[0]
        owners = sorted(by_kek)
        if owners:
            raise KeyAccessError(
                f"{what}: its data key is wrapped by {', '.join(owners)}, but the configured "
                f"keys are {', '.join(sorted({r.store.keys.kek_id for r in self.regions}))} "
                "(wrong key file)",
                hint="point keys.kek_file at the key file this registry was created with; "
                "after `keys rotate`, restart this process (it read the old config.toml)",
            )
        raise IntegrityError(f"{what}: its key slot is missing from the store", path=what)

    def _choose_key(
        self,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        reachable: Sequence[Region],
        stored: set[str],
        what: str,
        retired: frozenset[str] = frozenset(),
        key: bytes | None = None,
    ) -> tuple[bytes, dict[str, WrappedKey], str | None]:
        """The data key an object is (or will be) sealed with: an existing slot's, or a new
        one (`key` where given, else a random one) whose slot won the first reachable region
        (a concurrent push's slot wins there); with it the slots seen, and the region whose
        slot this call stored (None: none), which needs no second look.
        Given the `retired` keys (a push holding the verified file), a stored object whose every
        slot, recorded or in any region, is under a retired key that nothing configured opens
        (an orphan of a process refused after a key rotation, or content only a lost key opened)
        gets a new key: its copies then fail the key check and are sealed anew."""
        try:
            if not self._first_come(known=known, reachable=reachable, stored=stored):
                return (*self.unwrap_any(kind, digest, known=known, what=what), None)
        except KmsUnreachableError:
            raise
        except (IntegrityError, KeyAccessError) as error:
            # Every slot, recorded or stored, under a retired key: either an orphan of a refused
            # process, or content only a lost key opened (a push of the same file repairs it).
            orphan = (
                bool(retired)
                and all(slot.kek_id in retired for slot in known)
                and len(reachable) == len(self.regions)
                and self._only_retired_slots(kind, digest, retired)
            )
            if isinstance(error, KeyAccessError) and not orphan:
                raise
            if stored and not orphan:
                raise IntegrityError(
                    f"{what}: the stored object's key slot is lost; it cannot be decrypted",
                    hint="restore the slot from a backup of the store or the catalog",
                    path=what,
                ) from None
        context = self.primary.context(kind, digest)
        errors: list[RegistryError] = []
        for region in reachable:
            store = region.store
            try:
                if key is None:
                    data_key, slot = store.keys.generate(context=context)
                else:
                    data_key, slot = key, store.keys.wrap(key, context=context)
                name = store.slot_name(kind, digest, slot.kek_id)
                if store.driver.put_if_absent(name, [slot.to_json()]):
                    return data_key, {slot.kek_id: slot}, region.name
                # A concurrent push stored its slot first: its data key is the one that counts.
                existing = store.read_slot(kind, digest, what=what)
                if existing is None:
                    raise StorageError(f"{what}: key slot vanished while it was being written")
                data_key = store.unwrap(kind, digest, existing, what=what)
                return data_key, {existing.kek_id: existing}, None
            except (KmsUnreachableError, StorageError) as error:
                errors.append(error)
        raise StorageError(
            f"{what}: no region could store a new key slot ({'; '.join(map(str, errors))})"
            if errors
            else f"{what}: no region is reachable",
            hint="check the regions (`model-registry regions status`)",
        )

    def _first_come(
        self, *, known: Sequence[WrappedKey], reachable: Sequence[Region], stored: set[str]
    ) -> bool:
        """Whether a new object's slot can go straight to its first-come write, without a read
        first: one region, holding no copy, whose one key-encryption key (no rotation under way)
        has no recorded slot. The write finds a slot stored before (a crashed push's) as the
        read would have, and its key is the one used: one round trip less per new object."""
        return (
            len(self.regions) == 1
            and len(reachable) == 1
            and not known
            and not stored
            and len(self.regions[0].store.keys.kek_ids) == 1
        )

    def _only_retired_slots(self, kind: str, digest: str, retired: frozenset[str]) -> bool:
        """Whether every region's slots of an object are under retired keys (and exist)."""
        found = 0
        for region in self.regions:
            for slot in region.store.stored_slots(kind, digest):
                if slot.kek_id not in retired:
                    return False
                found += 1
        return found > 0

    def _region_slot(
        self, region: Region, kind: str, digest: str, data_key: bytes, slots: dict[str, WrappedKey]
    ) -> WrappedKey:
        """The region's own slot of `data_key`, written when missing; IntegrityError when the
        region already holds a slot of another data key (a concurrent first push elsewhere)."""
        store = region.store
        what = f"{kind} {digest} in {region.name}"
        existing = store.read_slot(kind, digest, what=what)
        if existing is None:
            slot = slots.get(store.keys.kek_id) or store.keys.wrap(
                data_key, context=store.context(kind, digest)
            )
            name = store.slot_name(kind, digest, slot.kek_id)
            if store.driver.put_if_absent(name, [slot.to_json()]):
                slots[slot.kek_id] = slot
                return slot
            existing = store.read_slot(kind, digest, what=what)
            if existing is None:
                raise StorageError(f"{what}: key slot vanished while it was being written")
        if slots.get(existing.kek_id) != existing:
            theirs = store.unwrap(kind, digest, existing, what=what)
            if not hmac.compare_digest(theirs, data_key):
                raise IntegrityError(f"{what}: its key slot holds another data key", path=what)
        slots[existing.kek_id] = existing
        return existing

    def _replace_slot(
        self, region: Region, kind: str, digest: str, data_key: bytes, slots: dict[str, WrappedKey]
    ) -> None:
        """Before a damaged copy is replaced: the region's slot must hold this data key (a
        region that was sealed with another key by a concurrent first push gets it rewritten)."""
        store = region.store
        what = f"{kind} {digest} in {region.name}"
        try:
            existing = store.read_slot(kind, digest, what=what)
            if existing is not None and hmac.compare_digest(
                store.unwrap(kind, digest, existing, what=what), data_key
            ):
                return
        except IntegrityError:
            pass  # a damaged slot is replaced like a damaged object
        slot = slots.get(store.keys.kek_id) or store.keys.wrap(
            data_key, context=store.context(kind, digest)
        )
        store.driver.replace(store.slot_name(kind, digest, slot.kek_id), [slot.to_json()])
        slots[slot.kek_id] = slot
