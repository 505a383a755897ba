"""The edges of fault tolerance that a review found broken, each pinned by a test: an init that
fails never removes what is not its own and can be run again after claiming stores; a region's
claim check is asked again after a blip (one region, KMS too); a catalog that is behind is never
let into the stores' journal when the comparison could not run; a catalog from before identities
is not adopted by another registry's home; a call's own timeout is not taken for its deadline; a
writer that takes data in bursts is not dropped as stalled; a corrupted SQLite catalog and a
dropped PostgreSQL database are missing catalogs (exit 13); one slow read does not keep a
region's journal behind for good.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

import registry.replication.health as health
from cli.main import main
from registry import journal
from registry.blobstore import MARKER, BlobStore
from registry.errors import (
    CatalogMismatchError,
    ConfigurationError,
    RegistryError,
    StorageError,
)
from registry.ops import init as init_module
from registry.service import Registry
from registry.storage.deadline import call_with_deadline
from registry.testing.models import make_model

# -- init: a failed init must leave nothing behind, and never remove what is not its own --------


def test_failed_init_leaves_no_claimed_store_behind(home: Path, tmp_path: Path) -> None:
    """An init that fails while claiming the second region (the first one claimed) can be run
    again once the fault is gone: it takes up the registry id the first region now names."""
    stores = [str(tmp_path / "region-a"), str(tmp_path / "region-b")]
    original = BlobStore.claim

    def claim(self: BlobStore) -> None:
        if Path(getattr(self.driver, "root", "")).name == "region-b":
            raise StorageError("region-b: connection reset")
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BlobStore, "claim", claim)
        with pytest.raises(StorageError):
            Registry.init(home, store=stores)

    # The fault is gone: the same command must now work.
    Registry.init(home, store=stores)
    with Registry.open(home) as registry:
        assert [r.name for r in registry.replicas.regions]


def test_concurrent_init_of_one_home_never_deletes_the_registry_made_by_the_other(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inits of one new home (two containers on one volume): the one that loses the race
    removes nothing of the registry the other made (keys, config, catalog)."""
    original = getattr(init_module, "prepare_bucket")  # noqa: B009 - not re-exported
    state = {"nested": False}

    def prepare_bucket(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        if not state["nested"]:
            state["nested"] = True
            Registry.init(home)  # the other process wins the race

    monkeypatch.setattr(init_module, "prepare_bucket", prepare_bucket)
    with pytest.raises(RegistryError):
        Registry.init(home)

    assert (home / "config.toml").exists(), "the winner's config.toml was deleted"
    assert (home / "keys" / "kek.key").exists(), "the winner's key-encryption key was deleted"
    with Registry.open(home) as registry:
        assert registry.models() == []


def test_failed_init_never_removes_a_parent_directory_another_registry_now_lives_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed init removes the directories it made only while they are empty: a registry made
    meanwhile in a parent directory it created survives."""
    monkeypatch.setenv("MODEL_REGISTRY_ACTOR", "tester@example")
    monkeypatch.delenv("MODEL_REGISTRY_CATALOG_URL", raising=False)
    parent = tmp_path / "data" / "registries"
    original = getattr(init_module, "prepare_bucket")  # noqa: B009 - not re-exported
    state = {"done": False}

    def prepare_bucket(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)
        if not state["done"]:
            state["done"] = True
            Registry.init(parent / "b")  # another team's registry, created meanwhile
            raise ConfigurationError("the bucket has no Object Lock")  # a's init fails

    monkeypatch.setattr(init_module, "prepare_bucket", prepare_bucket)
    with pytest.raises(ConfigurationError):
        Registry.init(parent / "a")

    assert (parent / "b" / "keys" / "kek.key").exists(), "another registry's keys were deleted"
    with Registry.open(parent / "b") as other:
        assert other.models() == []


# -- claims: a region that failed once must be asked again -------------------------------------


def test_region_whose_claim_check_failed_once_is_not_down_forever(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region whose claim check failed once is asked again once its time out is over, even
    while the process keeps working (a known outage is not counted again as a new one)."""
    # The health clock is the test's: a slow machine must not let the time out end while the
    # first push is still running, nor need real minutes for it to end.
    clock = _HealthClock()
    monkeypatch.setattr(health, "time", clock)
    Registry.init(
        home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")], write_quorum=1
    )
    with Registry.open(home) as registry:
        region_b = registry.replicas.regions[1]
        driver = region_b.store.driver
        blips = _blip_once_on_the_marker(monkeypatch, driver, "region-b: connection reset")
        first = registry.push(
            "org/m", make_model(tmp_path / "m0", shards=1, shard_size=2000, seed=0)
        )
        assert blips["left"] == 0, "the claim check did not read the marker"
        assert first.pending_regions  # the blip: region-b left out, fine
        # A busy process: pushes while region-b is known down (left out, not counted again),
        # then past the end of its time out; region-b has answered every request since the blip.
        for seed in range(1, 9):
            pushed = registry.push(
                "org/m", make_model(tmp_path / f"m{seed}", shards=1, shard_size=2000, seed=seed)
            )
            if seed <= 3:
                assert pushed.pending_regions, "region-b was asked again inside its time out"
            clock.advance(health.DOWN_FOR / 4)
        last = registry.push(
            "org/m", make_model(tmp_path / "last", shards=1, shard_size=2000, seed=999)
        )
        assert last.pending_regions == (), (
            f"region-b is still left out long after it came back: {last.pending_regions}"
        )


class _HealthClock:
    """Stands in for the `time` module in region health: real time plus what the test adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


# -- the journal check: a check that could not run must not count as done -----------------------


def test_catalog_behind_check_that_failed_does_not_let_a_conflicting_segment_into_the_stores(
    home: Path, tmp_path: Path
) -> None:
    """A catalog restored from a backup whose first comparison with the stores could not run (a
    blip): the change may commit, but no region is written to before it was compared, so the
    stores never get a segment that contradicts theirs."""
    Registry.init(home)
    model = make_model(tmp_path / "m", shards=1, shard_size=2000, seed=1)
    backup = tmp_path / "backup.db"
    with Registry.open(home) as registry:
        registry.push("org/m", model)
        source, copy = sqlite3.connect(home / "catalog.db"), sqlite3.connect(backup)
        source.backup(copy)
        copy.close()
        source.close()
        # After the backup: a pull's audit entry and a promotion, drained as one segment (3-4).
        registry.pull("org/m@1", tmp_path / "out")
        registry.promote("org/m@1", "staging")
    for path in home.glob("catalog.db*"):
        path.unlink()
    (home / "catalog.db").write_bytes(backup.read_bytes())

    with Registry.open(home) as registry:
        store = registry.store
        real = store.journal_listing
        blips = {"left": 1}

        def listing() -> object:
            if blips["left"]:
                blips["left"] -= 1
                raise StorageError("listing journal/: connection reset (a blip)")
            return real()

        store.journal_listing = listing  # type: ignore[method-assign,assignment]
        # Refusing the change is right; what must not happen is below.
        with contextlib.suppress(RegistryError):
            registry.promote("org/m@1", "production")
        store.journal_listing = real  # type: ignore[method-assign]
        stored = journal.read(store)  # IntegrityError: two segments disagree on entry 3
        assert len(stored.entries) == 4


# -- the catalog's identity --------------------------------------------------------------------


def _as_0009_catalog(url: str) -> None:
    """Turn a catalog back into what migration 0009 left: no identity, no manifest cache."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE catalog_identity"))
        connection.execute(text("DROP TABLE manifest_cache"))
        # ...and what later revisions added, so that the upgrade runs from 0009 as it would.
        connection.execute(text("DROP TABLE ui_sessions"))
        connection.execute(text("DROP TABLE version_meta"))
        connection.execute(text("DROP TABLE tags"))
        connection.execute(text("DROP TABLE signer_policies"))
        for table in ("upload_files", "upload_sessions"):
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("DROP TABLE limit_counts"))
        connection.execute(text("DROP TABLE limit_signals"))
        connection.execute(text("DROP INDEX ix_audit_events_actor_id"))
        connection.execute(text("DROP INDEX ix_audit_events_action_id"))
        connection.execute(text("DROP INDEX ix_blobs_object_name"))
        connection.execute(text("DROP INDEX ix_versions_manifest_object"))
        connection.execute(text("UPDATE alembic_version SET version_num = '0009'"))
    engine.dispose()


def test_pre_identity_catalog_is_not_taken_over_by_another_registrys_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog from before identities is adopted only by a home whose keys its key slots name:
    another registry's home is refused (exit 14) and the rightful home still opens it."""
    monkeypatch.setenv("MODEL_REGISTRY_ACTOR", "tester@example")
    monkeypatch.delenv("MODEL_REGISTRY_CATALOG_URL", raising=False)
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    Registry.init(home_a)
    with Registry.open(home_a) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=1, shard_size=2000, seed=3))
    Registry.init(home_b)
    url_a = f"sqlite:///{home_a / 'catalog.db'}"
    _as_0009_catalog(url_a)

    monkeypatch.setenv("MODEL_REGISTRY_CATALOG_URL", url_a)
    try:
        with Registry.open(home_b) as wrong:
            wrong.models()
    except CatalogMismatchError:
        pass
    monkeypatch.delenv("MODEL_REGISTRY_CATALOG_URL")

    with Registry.open(home_a) as registry:  # CatalogMismatchError: owned by b now
        assert [m.name for m in registry.models()] == ["org/m"]


# -- deadlines ---------------------------------------------------------------------------------


def test_call_with_deadline_passes_on_the_calls_own_timeout_error_at_once() -> None:
    """A TimeoutError the call itself raises (ETIMEDOUT) is its answer, passed on at once, not
    taken for the deadline passing."""

    def work(_budget: object) -> None:
        raise TimeoutError("connect: ETIMEDOUT")

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="ETIMEDOUT"):
        call_with_deadline(work, seconds=2.0, what="probe")
    assert time.monotonic() - started < 1.0


# -- writes: a region taking data in parts is not "stalled" ------------------------------------

FAST_DEADLINES = """
[deadlines]
request_seconds = 0.3
hedge_after_seconds = 0.1
"""


def test_region_uploading_in_parts_above_the_rate_floor_is_not_dropped_as_stalled(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that takes data in bursts (a part at a time) above the slowest acceptable rate
    is not dropped as stalled: the push completes in every region."""
    Registry.init(home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")])
    with (home / "config.toml").open("a") as config:
        config.write(FAST_DEADLINES)
    model = make_model(tmp_path / "m", shards=1, shard_size=14 * 1024 * 1024, seed=5)
    with Registry.open(home) as registry:
        driver = registry.replicas.regions[1].store.driver
        real = driver.put_if_absent

        def put_if_absent(name: str, chunks: object, *args: object, **kwargs: object) -> bool:
            def in_parts() -> object:
                taken = 0
                for chunk in chunks:  # type: ignore[attr-defined]
                    yield chunk
                    taken += len(chunk)
                    if taken >= 4 * 1024 * 1024:
                        taken = 0
                        time.sleep(0.5)  # a part uploading

            return real(name, in_parts(), *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(driver, "put_if_absent", put_if_absent)
        result = registry.push("org/m", model)
        assert result.pending_regions == ()


# -- a lost catalog, as the runbook lists the ways to lose one ---------------------------------


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_a_corrupted_sqlite_catalog_is_refused_with_exit_13_and_the_stores_still_proven(
    home: Path, tmp_path: Path
) -> None:
    """A SQLite catalog that is not a database any more is a lost catalog: exit 13, and the
    stores can still be proven without it."""
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=1, shard_size=2000, seed=2))
    for path in home.glob("catalog.db*"):
        path.unlink()
    (home / "catalog.db").write_bytes(b"\x5a" * 8192)  # the disk returned garbage

    listed = _cli("ls")
    assert listed.exit_code == 13, listed.output
    drilled = _cli("drill")
    assert drilled.exit_code == 0, drilled.output


@pytest.mark.postgres
def test_a_dropped_postgresql_database_is_a_missing_catalog(
    home: Path, tmp_path: Path, postgres_admin: str, postgres_url: str
) -> None:
    """A dropped PostgreSQL database is a lost catalog (exit 13), not an unreachable server, and
    the stores can still be proven without it."""
    Registry.init(home, catalog_url=postgres_url)
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=1, shard_size=2000, seed=2))
    name = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()

    listed = _cli("ls")
    assert listed.exit_code == 13, listed.output
    drilled = _cli("drill")
    assert drilled.exit_code == 0, drilled.output


# -- one region: a failed claim check must not stick ---------------------------------------------


def _single_region_with_a_version(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=1, shard_size=2000, seed=4))


def test_single_region_store_blip_does_not_fail_every_later_pull(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one region, a store blip at the claim check does not fail later pulls: the check is
    asked again at once."""
    monkeypatch.setattr(health, "DOWN_FOR", 0.3)
    _single_region_with_a_version(home, tmp_path)
    with Registry.open(home) as registry:  # a server starts
        driver = registry.store.driver
        _blip_once_on_the_marker(monkeypatch, driver, "connection reset")
        with contextlib.suppress(StorageError):  # the blip may fail the first pull, or not
            registry.pull("org/m@1", tmp_path / "first")
        deadline = time.monotonic() + 1.2
        attempt = 0
        while time.monotonic() < deadline:  # clients keep asking
            attempt += 1
            with contextlib.suppress(StorageError):
                registry.pull("org/m@1", tmp_path / f"try-{attempt}")
            time.sleep(0.1)
        registry.pull("org/m@1", tmp_path / "last")  # the store has been fine for 1.2 s


def test_single_region_kms_blip_at_the_claim_check_does_not_stick_for_the_process(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one region, a KMS timeout at the claim check is transient too: a later pull asks
    again and works."""
    from registry.errors import KmsUnreachableError

    monkeypatch.setattr(health, "DOWN_FOR", 0.3)
    _single_region_with_a_version(home, tmp_path)
    with Registry.open(home) as registry:  # a server starts
        store = registry.store
        real = store.check_claim
        blips = {"left": 1}

        def check_claim() -> None:
            if blips["left"]:
                blips["left"] -= 1
                raise KmsUnreachableError(
                    "kms.eu-west-1.amazonaws.com: read timed out", region="eu-west-1"
                )
            real()

        monkeypatch.setattr(store, "check_claim", check_claim)
        with contextlib.suppress(KmsUnreachableError):  # the first pull may meet it, or not
            registry.pull("org/m@1", tmp_path / "first")
        assert blips["left"] == 0  # the claim check did meet it
        time.sleep(0.5)  # KMS answers again, longer than any outage is remembered
        registry.pull("org/m@1", tmp_path / "later")


@pytest.mark.postgres
def test_failed_init_under_a_catalog_url_override_leaves_that_database_empty(
    home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MODEL_REGISTRY_CATALOG_URL set, init checks, makes and (when it fails) removes the
    catalog of that URL, the one every command opens."""
    monkeypatch.setenv("MODEL_REGISTRY_CATALOG_URL", postgres_url)

    def claim(self: BlobStore) -> None:
        raise StorageError("the bucket refused the marker")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BlobStore, "claim", claim)
        with pytest.raises(StorageError):
            Registry.init(home)

    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        left = (
            connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            .scalars()
            .all()
        )
    engine.dispose()
    assert left == [], f"a failed init left tables behind: {sorted(left)}"


# -- the journal: one slow read must not keep a region's journal behind -------------------------


def test_one_missed_budget_does_not_keep_a_regions_journal_behind_for_good(
    home: Path, tmp_path: Path
) -> None:
    """One read that missed its budget makes a region skipped by drains only for
    `degraded_seconds`: its journal then catches up."""
    Registry.init(
        home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")], write_quorum=1
    )
    with (home / "config.toml").open("a") as config:
        config.write("\n[deadlines]\ndegraded_seconds = 0.2\n")
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=1, shard_size=2000, seed=6))
        second = registry.replicas.regions[1].name
        # Once, while the first region was being read around, the second missed its budget.
        registry.replicas.health.missed(second, 0.5)
        registry.promote("org/m@1", "production")
        for _ in range(3):  # the server's journal timer, later on (past degraded_seconds)
            time.sleep(0.1)
            registry.drain_journal()
        behind = {state.region: state.behind for state in registry.journal_status()}
        assert behind[second] == 0, f"{second} stays behind: {behind}"


def _blip_once_on_the_marker(
    monkeypatch: pytest.MonkeyPatch, driver: Any, message: str
) -> dict[str, int]:
    """The driver's next read of the store's marker (the claim check) fails once, as a
    connection reset would; the returned counter says whether it did."""
    real = driver.get_range
    blips = {"left": 1}

    def get_range(name: str, *args: object, **kwargs: object) -> bytes:
        if blips["left"] and name == MARKER:
            blips["left"] -= 1
            raise StorageError(f"{message} (a blip)")
        return real(name, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(driver, "get_range", get_range)
    return blips
