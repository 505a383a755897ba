"""An object brought to every region: which regions hold it, its data key, the copies to copy from,
one stream (a good copy's bytes, or a new sealing) written to every region that lacks it or
holds it damaged, each copy read back, and each region's outcome (`Replicated`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from registry.crypto import sealed
from registry.crypto.keys import WrappedKey
from registry.errors import (
    REPUSH_HINT,
    IntegrityError,
    KeyAccessError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
)
from registry.replication.fanout import Chunks, Delivery, fan_out
from registry.replication.health import outage
from registry.replication.regions import BAD, PENDING, VERIFIED, Outcome, Region, fresh_failure
from registry.replication.repair import Repairs


@dataclass(frozen=True)
class Replicated:
    """An object as the regions hold it: the data key's slots and each region's outcome."""

    kind: str
    digest: str
    object_name: str
    header: sealed.SealedHeader | None
    slots: tuple[WrappedKey, ...]
    outcomes: tuple[Outcome, ...]

    @property
    def uploaded(self) -> bool:
        return any(outcome.uploaded for outcome in self.outcomes)

    @property
    def verified(self) -> list[str]:
        return [o.region for o in self.outcomes if o.state == VERIFIED]


@dataclass(frozen=True)
class _Written:
    """What a fan-out wrote: each target's delivery, the sources found damaged on the way,
    whether the bytes came from a new sealing, and the sealed header of the bytes written."""

    results: dict[str, Delivery]
    bad_sources: dict[str, str]
    sealed: bool
    header: bytes | None = None


@dataclass
class _Copies:
    """Where an object's copies stand while `replicate` works on them: each region's outcome so
    far, the regions that hold a copy and those reachable, the copies to copy from, the regions
    to write and the copies found damaged, and the ciphertext checksum known so far."""

    checksum: str | None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)
    reachable: list[Region] = field(default_factory=list)
    sources: list[Region] = field(default_factory=list)
    targets: list[Region] = field(default_factory=list)
    damaged: list[Region] = field(default_factory=list)
    # The region whose key slot this call stored (known to hold the data key: not read again).
    slot_stored: str | None = None
    # The header of the bytes this call wrote, and the regions where they are the object: their
    # header is known without reading it back.
    header: bytes | None = None
    ours: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class DataKey:
    """An object's data key chosen before its write (`Writes.choose_key`): the key, the slots
    seen or stored on the way, and the region whose slot that choice stored."""

    key: bytes = field(repr=False)
    slots: dict[str, WrappedKey]
    slot_stored: str | None


class Writes(Repairs):
    """Writes of a replica set's objects to every region, copies checked and repaired."""

    def choose_key(
        self,
        kind: str,
        digest: str,
        *,
        what: str,
        known: Sequence[WrappedKey] = (),
        retired: frozenset[str] = frozenset(),
    ) -> DataKey:
        """The data key `replicate` will seal the object with, its slot stored now if it is a
        new one (a slot alone is harmless), so that the write itself starts with the data: a
        push chooses its manifest's key while its files are written."""
        copies = _Copies(None)
        self._survey(copies, self.regions, self.primary.object_name(kind, digest))
        data_key, slots, slot_stored = self._choose_key(
            kind,
            digest,
            known=known,
            reachable=copies.reachable,
            stored=copies.stored,
            what=what,
            retired=retired,
        )
        return DataKey(data_key, slots, slot_stored)

    def replicate(
        self,
        kind: str,
        digest: str,
        *,
        what: str,
        known: Sequence[WrappedKey] = (),
        seal: Callable[[bytes], Chunks] | None = None,
        checksum: str | None = None,
        trusted: frozenset[str] = frozenset(),
        repair: bool = False,
        only: frozenset[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
        size: int = 0,
        read_back: bool = True,
        suspect: frozenset[str] = frozenset(),
        retired: frozenset[str] = frozenset(),
        key: DataKey | None = None,
        new_key: bytes | None = None,
    ) -> Replicated:
        """Bring the object to every region (or those in `only`) and report each one's state.

        `seal(data_key)` yields a new sealed object, used when no region holds a good one yet (a
        push, which also replaces damaged copies); otherwise missing copies are copied from a
        good one. `checksum` is the ciphertext
        checksum recorded before; copies in `trusted` regions (verified before) are checked for
        presence and key only, every other copy is read back (unless `read_back` is off: one
        region, where the write's own checks stand in; copies in `suspect` regions, recorded bad
        or pending, are read back whatever `read_back` says). With `repair`, a damaged copy is
        replaced by a good one (a new version where the store keeps versions). A region that
        fails gets a `pending` or `bad` outcome; nothing here raises for one region's failure.
        `key`, from `choose_key`, is the data key chosen before (else it is chosen here: an
        existing slot's, or `new_key` where given, an upload session's own, else a random one).
        """
        regions = [r for r in self.regions if only is None or r.name in only]
        name = self.primary.object_name(kind, digest)
        copies = _Copies(checksum)
        self._survey(copies, regions, name)
        if key is not None:
            data_key, slots, copies.slot_stored = key.key, dict(key.slots), key.slot_stored
        else:
            data_key, slots, copies.slot_stored = self._choose_key(
                kind,
                digest,
                known=known,
                reachable=copies.reachable,
                stored=copies.stored,
                what=what,
                retired=retired if seal is not None else frozenset(),
                key=new_key,
            )
        self._sort_copies(copies, kind, digest, data_key, slots, trusted=trusted, what=what)
        # Copies elsewhere (outside `only`) can serve as sources too.
        extra_sources = [
            r
            for r in self.regions
            if r not in regions and r.name in copies.stored and not self.is_down(r)
        ]
        self._read_back_sources(
            copies, kind, digest, data_key, read_back=read_back, suspect=suspect, what=what
        )
        if repair and copies.sources:
            _align_sources(copies)
        if repair or seal is not None:
            # A repair, or a push holding the verified local file: damaged copies are replaced
            # (from a good copy when there is one, else by sealing the file anew).
            copies.targets += copies.damaged
        sealed_now = False
        if copies.targets:
            sealed_now = self._write_targets(
                copies,
                kind,
                digest,
                data_key,
                sources=copies.sources + extra_sources,
                seal=seal,
                slots=slots,
                what=what,
                read_back=read_back,
            )
        if on_progress is not None and not sealed_now:
            on_progress(size)  # sealing reports its own progress; a copy or a reuse does not
        header = self._verified_header(copies, kind, digest, what=what)
        # A copy outside `only` found damaged while copying from it is reported too.
        ordered = tuple(copies.outcomes[r.name] for r in self.regions if r.name in copies.outcomes)
        return Replicated(kind, digest, name, header, tuple(slots.values()), ordered)

    def _survey(self, copies: _Copies, regions: Sequence[Region], name: str) -> None:
        """Which of `regions` are reachable and hold the object (asked at once; one that fails
        is recorded pending), and which regions outside them hold it too."""
        for region, result in zip(
            regions, self._each(regions, lambda r: self._stat_available(r, name)), strict=True
        ):
            if isinstance(result, Exception):
                if fresh_failure(result):
                    self.mark_down(region, result)
                copies.outcomes[region.name] = Outcome(region.name, PENDING, detail=outage(result))
                continue
            copies.reachable.append(region)
            if result is not None:
                copies.stored.add(region.name)
        # Regions outside `only` may hold the copy to start from.
        for region in self.regions:
            if region not in regions and not self.is_down(region):
                try:
                    if region.store.driver.stat(name) is not None:
                        copies.stored.add(region.name)
                except StorageError as error:
                    self.mark_down(region, error)

    def _sort_copies(
        self,
        copies: _Copies,
        kind: str,
        digest: str,
        data_key: bytes,
        slots: dict[str, WrappedKey],
        *,
        trusted: frozenset[str],
        what: str,
    ) -> None:
        """Each reachable region's slot of the data key written or checked, and the region sorted:
        a source (its copy opens with the key), a target (no copy yet), damaged, or pending."""
        for region in copies.reachable:
            try:
                if region.name != copies.slot_stored:
                    self._region_slot(region, kind, digest, data_key, slots)
                if region.name in copies.stored:
                    region.store.check_key(kind, digest, data_key, what=what)
                    region.store.keep_locked(kind, digest)
                    if region.name in trusted:
                        copies.outcomes[region.name] = Outcome(
                            region.name, VERIFIED, copies.checksum
                        )
                    copies.sources.append(region)
                else:
                    copies.targets.append(region)
            except KmsUnreachableError as error:
                copies.outcomes[region.name] = Outcome(region.name, PENDING, detail=str(error))
            except IntegrityError as error:
                copies.outcomes[region.name] = Outcome(region.name, BAD, detail=str(error))
                copies.damaged.append(region)
            except (StorageError, KeyAccessError) as error:
                copies.outcomes[region.name] = Outcome(region.name, PENDING, detail=str(error))

    def _read_back_sources(
        self,
        copies: _Copies,
        kind: str,
        digest: str,
        data_key: bytes,
        *,
        read_back: bool,
        suspect: frozenset[str],
        what: str,
    ) -> None:
        """Stored copies not yet trusted are read back now: a damaged one is no source."""
        for region in [r for r in copies.sources if r.name not in copies.outcomes]:
            if not read_back and region.name not in suspect:
                copies.outcomes[region.name] = Outcome(region.name, VERIFIED, copies.checksum)
                continue
            outcome = self._check(region, kind, digest, data_key, copies.checksum, what=what)
            copies.outcomes[region.name] = outcome
            if outcome.state == VERIFIED:
                copies.checksum = copies.checksum or outcome.checksum
            else:
                copies.sources.remove(region)
                copies.damaged.append(region)

    def _write_targets(
        self,
        copies: _Copies,
        kind: str,
        digest: str,
        data_key: bytes,
        *,
        sources: Sequence[Region],
        seal: Callable[[bytes], Chunks] | None,
        slots: dict[str, WrappedKey],
        what: str,
        read_back: bool,
    ) -> bool:
        """Write every target (damaged copies replaced), read each one back and record its
        outcome; whether the bytes came from a new sealing."""
        written = self._write(
            copies.targets,
            kind,
            digest,
            data_key,
            sources=sources,
            seal=seal,
            replace={r.name for r in copies.damaged},
            slots=slots,
            what=what,
            checksums=read_back,
        )
        for source_name, detail in written.bad_sources.items():
            copies.outcomes[source_name] = Outcome(source_name, BAD, detail=detail)
        copies.header = written.header
        for region in copies.targets:
            failure, new_checksum, ours = written.results[region.name]
            if ours:
                copies.ours.add(region.name)
            if failure is not None:
                state = BAD if isinstance(failure, IntegrityError) else PENDING
                copies.outcomes[region.name] = Outcome(region.name, state, detail=str(failure))
                continue
            # What was written is what must be read back; a copy another push wrote
            # meanwhile is authenticated in full instead.
            if read_back:
                expected = new_checksum or copies.checksum
                outcome = self._check(region, kind, digest, data_key, expected, what=what)
            else:
                outcome = Outcome(region.name, VERIFIED, new_checksum)
            repaired = region in copies.damaged
            copies.outcomes[region.name] = Outcome(
                region.name,
                outcome.state,
                outcome.checksum,
                (
                    "repaired from a good copy; the damaged version stays locked until it expires"
                    if repaired and outcome.state == VERIFIED
                    else outcome.detail
                ),
                uploaded=outcome.state == VERIFIED,
            )
            copies.checksum = copies.checksum or outcome.checksum
        return written.sealed

    def _verified_header(
        self, copies: _Copies, kind: str, digest: str, *, what: str
    ) -> sealed.SealedHeader | None:
        """The sealed header of the first verified copy that can be read, or None. A copy whose
        bytes this call wrote has the header it was sent with (the store checked the bytes on
        receipt): one round trip less per object written."""
        outcomes = copies.outcomes
        for region in self.regions:
            if region.name in outcomes and outcomes[region.name].state == VERIFIED:
                if copies.header is not None and region.name in copies.ours:
                    return sealed.SealedHeader.unpack(copies.header, what=what)
                try:
                    return region.store.header(kind, digest, what=what)
                except RegistryError:
                    continue
        return None

    def _write(
        self,
        targets: Sequence[Region],
        kind: str,
        digest: str,
        data_key: bytes,
        *,
        sources: Sequence[Region],
        seal: Callable[[bytes], Chunks] | None,
        replace: set[str],
        slots: dict[str, WrappedKey],
        what: str,
        checksums: bool = True,
    ) -> _Written:
        """Write one stream to every target in parallel: a good copy's bytes (authenticated on
        the way) when a region has one, the next copy when one turns out damaged, a new sealing
        when none is left and `seal` is given. Never raises for a damaged source or a target."""
        name = self.primary.object_name(kind, digest)
        attempts: list[tuple[Region | None, Callable[[], Chunks]]] = [
            (
                source,
                functools.partial(self._authenticated, source, kind, digest, data_key, what=what),
            )
            for source in sources
        ]
        tap = _HeaderTap()
        if seal is not None:
            attempts.append((None, lambda: tap.tap(seal(data_key))))

        def write(region: Region, chunks: Chunks) -> bool:
            """Whether the region now holds these very bytes."""
            driver = region.store.driver
            if region.name in replace:
                self._replace_slot(region, kind, digest, data_key, slots)
                driver.replace(name, chunks)
                return True
            if driver.put_if_absent(name, chunks):
                return True
            # Written meanwhile by a concurrent push: what counts is that it opens.
            region.store.check_key(kind, digest, data_key, what=what)
            return False

        bad_sources: dict[str, str] = {}
        failure: Exception = IntegrityError(
            f"{what}: no region holds a good copy to copy from (a push of the same files "
            "rewrites it)",
            hint=REPUSH_HINT,
            path=what,
        )
        for source, stream in attempts:
            try:
                results = fan_out(
                    targets,
                    stream,
                    write,
                    checksum=checksums,
                    deadlines=self.deadlines,
                    mark_down=self.mark_down,
                )
                header = tap.header() if source is None else None
                return _Written(results, bad_sources, sealed=source is None, header=header)
            except (IntegrityError, StorageError, KeyAccessError) as error:
                if source is None:
                    raise  # the local file changed or cannot be read: the push's own problem
                # Nothing was published (a copy's last bytes are withheld until it all
                # checked), so the next copy can serve every target. Only damage blames the
                # source; an outage says nothing about its copy.
                failure = error
                if isinstance(error, IntegrityError):
                    bad_sources[source.name] = str(error)
                else:
                    self.mark_down(source, error)
        return _Written({r.name: Delivery(failure) for r in targets}, bad_sources, sealed=False)


class _HeaderTap:
    """The first bytes of a stream, its sealed header, kept as the stream passes."""

    def __init__(self) -> None:
        self._data = bytearray()

    def tap(self, chunks: Chunks) -> Iterator[bytes | bytearray | memoryview]:
        self._data.clear()  # a stream started again is tapped again
        for chunk in chunks:
            missing = sealed.HEADER_SIZE - len(self._data)
            if missing > 0:
                self._data += memoryview(chunk).cast("B")[:missing]
            yield chunk

    def header(self) -> bytes | None:
        return bytes(self._data) if len(self._data) == sealed.HEADER_SIZE else None


def _align_sources(copies: _Copies) -> None:
    """Valid copies with other ciphertext (two first pushes raced, or one sealed anew over
    damage) are made identical to the preferred one: ranges stay interchangeable."""
    reference = copies.outcomes[copies.sources[0].name].checksum
    for region in list(copies.sources[1:]):
        if reference and copies.outcomes[region.name].checksum not in (None, reference):
            copies.sources.remove(region)
            copies.damaged.append(region)
    copies.checksum = reference or copies.checksum
