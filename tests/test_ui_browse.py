"""What the web UI reads and keeps, on SQLite and PostgreSQL (issue 19): the catalog's paged
reads (model names and summaries, a model's versions and their state, the audit trail by
filter and cursor), the operations over them (a listing filtered by name and by a token's
patterns), UI sessions in the catalog and as the operations end them, and migration 0011 on a
catalog that predates it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, update

from registry.catalog.db import _alembic_config, create_catalog_engine, current_revision, migrate
from registry.catalog.lite import HEAD_REVISION
from registry.catalog.models import Version
from registry.catalog.repository import Catalog
from registry.errors import InvalidInputError, UnauthenticatedError
from registry.records import (
    FileRecord,
    NewBlob,
    NewVersion,
    PlacementRecord,
    RegionCopies,
    UiSessionRecord,
)
from registry.refs import parse_reference
from registry.service import Registry


def _digest(text: str) -> str:
    return "blake3:" + hashlib.sha256(text.encode()).hexdigest()


def _version(
    name: str,
    key: str,
    *,
    files: dict[str, str] | None = None,
    placements: tuple[tuple[str, str, str], ...] = (),
    actor: str = "seeder",
) -> NewVersion:
    """A version recorded in the catalog only: `files` path -> content key (one key, one
    digest), `placements` (content key or "manifest", region, state)."""
    chosen = files if files is not None else {"w.bin": key}
    digests = {content: _digest(content) for content in chosen.values()}
    manifest = _digest(f"manifest {name} {key}")
    return NewVersion(
        name=name,
        digest=manifest,
        manifest_object=f"manifests/{key}",
        manifest_slots=(),
        message=f"{name} {key}",
        actor=actor,
        signed_by="seed",
        total_size=10 * len(chosen),
        tensor_count=0,
        parameter_count=0,
        dtypes=(),
        files=tuple(FileRecord(path, 10, digests[c], 0) for path, c in chosen.items()),
        blobs=tuple(NewBlob(d, 10, f"blobs/{d[7:]}", 100, 65536, ()) for d in digests.values()),
        placements=tuple(
            PlacementRecord(
                manifest if what == "manifest" else digests[what],
                "manifest" if what == "manifest" else "blob",
                region,
                f"objects/{what}",
                state,
            )
            for what, region, state in placements
        ),
    )


def _promote(catalog: Catalog, name: str, alias: str, target: int) -> None:
    catalog.move_alias(
        name,
        alias,
        kind="promote",
        target=target,
        reason="r",
        actor="u",
        may_move_protected=True,
        notify=[],
        event={},
    )


@pytest.fixture
def catalog(catalog_url: str | None, tmp_path: Path) -> Iterator[Catalog]:
    engine = create_catalog_engine(catalog_url or f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    opened = Catalog(engine)
    yield opened
    opened.close()


def test_model_names_and_summaries(catalog: Catalog) -> None:
    for name in ("b/two", "a/one", "c/three"):
        catalog.commit_version(_version(name, "1", files={"w.bin": "shared"}))
    catalog.commit_version(_version("a/one", "2", files={"w.bin": "shared", "x.bin": "x"}))
    catalog.commit_version(_version("a/one", "3", files={"y.bin": "y"}))
    _promote(catalog, "a/one", "production", 2)
    assert catalog.model_names() == ["a/one", "b/two", "c/three"]
    summaries = catalog.model_summaries(["c/three", "nothing/here", "a/one"])
    assert [s.name for s in summaries] == ["c/three", "a/one"]
    one = summaries[1]
    assert (one.version_count, one.latest, one.aliases) == (3, 3, (("production", 2),))
    assert one.stored_size == 30  # shared, x and y: content stored once counts once
    assert one.latest_at is not None and one.changed_at >= one.latest_at
    with catalog.engine.begin() as connection:
        connection.execute(
            update(Version)
            .where(Version.manifest_object == "manifests/3")
            .values(expired_at=datetime.now(UTC), expired_by="gc", expiry_reason="policy")
        )
    one = catalog.model_summaries(["a/one"])[0]
    assert (one.version_count, one.latest, one.stored_size) == (2, 2, 20)
    # The handle remembers sizes between listings; a push is seen at once all the same.
    catalog.commit_version(_version("a/one", "4", files={"w.bin": "shared", "z.bin": "z"}))
    one = catalog.model_summaries(["a/one"])[0]
    assert (one.version_count, one.latest, one.stored_size) == (3, 4, 30)


def test_version_pages_newest_first_with_or_without_tombstones(catalog: Catalog) -> None:
    for index in range(1, 13):
        catalog.commit_version(_version("org/m", str(index)))
    with catalog.engine.begin() as connection:
        connection.execute(
            update(Version)
            .where(Version.manifest_object.in_(["manifests/4", "manifests/5"]))
            .values(expired_at=datetime.now(UTC), expired_by="gc", expiry_reason="policy")
        )
    pages = [catalog.version_page("org/m", offset=offset, limit=4) for offset in (0, 4, 8)]
    assert [[v.number for v in page] for page, _total in pages] == [
        [12, 11, 10, 9],
        [8, 7, 6, 3],
        [2, 1],
    ]
    assert {total for _page, total in pages} == {10}
    every, total = catalog.version_page("org/m", offset=2, limit=5, expired=True)
    assert [v.number for v in every] == [10, 9, 8, 7, 6] and total == 12
    tombstones, _total = catalog.version_page("org/m", offset=7, limit=2, expired=True)
    assert [(v.number, v.expired_by) for v in tombstones] == [(5, "gc"), (4, "gc")]
    assert catalog.version_page("org/m", offset=40, limit=4) == ([], 10)


def test_version_states_count_each_object_once_per_region(catalog: Catalog) -> None:
    # Three files, two of them the same content: two blobs and the manifest, three objects.
    files = {"a.bin": "a", "b.bin": "b", "copy-of-b.bin": "b"}
    placements = (
        ("a", "r1", "verified"),
        ("b", "r1", "verified"),
        ("manifest", "r1", "verified"),
        ("a", "r2", "pending"),
        ("b", "r2", "bad"),
    )
    catalog.commit_version(_version("org/s", "1", files=files, placements=placements))
    catalog.commit_version(_version("org/s", "2"))
    _promote(catalog, "org/s", "production", 1)
    _promote(catalog, "org/s", "canary", 1)
    catalog.set_hold(parse_reference("org/s@1"), reason="why", actor="u")
    states = catalog.version_states("org/s", [1, 2, 99], regions=["r1", "r2", "r3"])
    assert sorted(states) == [1, 2]
    first = states[1]
    assert first.aliases == ("canary", "production")
    assert first.hold is not None and (first.hold.reason, first.hold.placed_by) == ("why", "u")
    assert first.regions == (
        RegionCopies("r1", 3, 0, 0, 0),
        RegionCopies("r2", 0, 1, 1, 1),
        RegionCopies("r3", 0, 0, 0, 3),
    )
    assert first.regions[0].complete and not first.regions[1].complete
    second = states[2]
    assert (second.aliases, second.hold) == ((), None)
    assert second.regions == (RegionCopies("r1", 0, 0, 0, 2), *second.regions[1:])


def test_the_audit_trail_by_filter_and_cursor(catalog: Catalog) -> None:
    for number in range(1, 13):
        catalog.commit_version(_version("org/a", str(number), actor="alice"))
    catalog.audit("bob", "promote", "org/a", {"version": 1, "alias": "x"})
    catalog.audit("bob", "promote", "org/a", {"version": 11, "alias": "x"})
    catalog.audit("bob", "hold", "org/b", {"version": 1})
    everything = catalog.audit_page(limit=1000)
    ids = [e.id for e in everything]
    assert ids == sorted(ids, reverse=True) and len(ids) == 15
    pages, before = [], None
    while True:
        page = catalog.audit_page(before=before, limit=4)
        if not page:
            break
        pages.append([e.id for e in page])
        before = page[-1].id
    assert [len(p) for p in pages] == [4, 4, 4, 3] and [i for p in pages for i in p] == ids
    assert {e.actor for e in catalog.audit_page(actor="bob")} == {"bob"}
    assert len(catalog.audit_page(actor="alice", action="push")) == 12
    assert [e.subject for e in catalog.audit_page(subjects=["org/b"])] == ["org/b"]
    assert len(catalog.audit_page(subjects=["org/a", "org/b"])) == 15
    # Version 1 of org/a: its push and the promote to it, not version 11's or org/b's.
    first = catalog.audit_page(subjects=["org/a"], version=1)
    assert [(e.action, e.details["version"]) for e in first] == [("promote", 1), ("push", 1)]
    assert [e.action for e in catalog.audit_page(subjects=["org/a"], version=11)] == [
        "promote",
        "push",
    ]
    middle = everything[7].at
    assert [e.id for e in catalog.audit_page(since=middle)] == [
        e.id for e in everything if e.at >= middle
    ]
    assert [e.id for e in catalog.audit_page(until=middle)] == [
        e.id for e in everything if e.at < middle
    ]
    assert catalog.audit_page(since=datetime.now(UTC) + timedelta(days=1)) == []


def test_ui_sessions_in_the_catalog(catalog: Catalog) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    live = UiSessionRecord("token-a", "csrf-1", now, now, now + timedelta(hours=12))
    catalog.open_ui_session("h1", live, idle_before=now - timedelta(minutes=30))
    assert catalog.ui_session("h1") == live
    assert catalog.ui_session("nothing") is None
    catalog.touch_ui_session("h1", now + timedelta(minutes=5))
    touched = catalog.ui_session("h1")
    assert touched is not None and touched.seen_at == now + timedelta(minutes=5)
    ended = UiSessionRecord("token-a", "csrf-2", now, now, now + timedelta(seconds=1))
    idle = UiSessionRecord("token-b", "csrf-3", now, now - timedelta(hours=1), now + timedelta(1))
    catalog.open_ui_session("h2", ended, idle_before=now - timedelta(hours=2))
    catalog.open_ui_session("h3", idle, idle_before=now - timedelta(hours=2))
    assert catalog.ui_session("h2") is not None and catalog.ui_session("h3") is not None
    # A later sign-in sweeps the sessions that ended by then, expired or idle.
    later = now + timedelta(seconds=2)
    newer = UiSessionRecord("token-b", "csrf-4", later, later, later + timedelta(hours=1))
    catalog.open_ui_session("h4", newer, idle_before=later - timedelta(minutes=30))
    assert catalog.ui_session("h2") is None and catalog.ui_session("h3") is None
    assert catalog.ui_session("h1") is not None and catalog.ui_session("h4") is not None
    catalog.close_ui_session("h4")
    catalog.close_ui_session("h4")  # already gone: nothing to do
    assert catalog.ui_session("h4") is None
    catalog.open_ui_session("h5", live, idle_before=now - timedelta(minutes=30))
    assert catalog.close_ui_sessions_of("token-a") == 2
    assert catalog.ui_session("h1") is None and catalog.close_ui_sessions_of("token-a") == 0


def test_listing_sessions_and_revocation_through_the_registry(
    home: Path, catalog_url: str | None
) -> None:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for index in range(7):
            registry.catalog.commit_version(_version(f"org/m{index}", "1"))
        registry.catalog.commit_version(_version("other/x", "1"))
        page = registry.model_page(query="ORG/", patterns=["*"], number=2, size=3)
        assert [m.name for m in page.models] == ["org/m3", "org/m4", "org/m5"]
        assert (page.total, page.pages) == (7, 3)
        assert registry.model_page(patterns=["org/*"], number=5, size=2).models == ()
        scoped = registry.model_page(query="x", patterns=["org/*"])
        assert scoped.total == 0 and registry.model_page(query="x").total == 1
        assert [m.name for m in registry.model_page(patterns=["other/*", "org/m6"]).models] == [
            "org/m6",
            "other/x",
        ]
        for number, size in ((0, 10), (1, 0), (1, 501)):
            with pytest.raises(InvalidInputError):
                registry.model_page(number=number, size=size)
        audit = registry.audit_page(size=3)
        assert len(audit.events) == 3 and audit.older == audit.events[-1].id
        rest = registry.audit_page(before=audit.older, size=500)
        assert rest.older is None
        with pytest.raises(InvalidInputError, match="time zone"):
            registry.audit_page(since=datetime(2026, 1, 1))

        record, token = registry.create_token("ui", role="reader", models=["org/*"])
        session_id, session, signed = registry.open_ui_session(token)
        assert signed.id == record.id and session.token_id == record.id
        assert registry.ui_session(session_id)[1].id == record.id
        stored = registry.catalog.ui_session(hashlib.sha256(session_id.encode()).hexdigest())
        assert stored is not None and stored.csrf == session.csrf
        registry.close_ui_session(session_id)
        with pytest.raises(UnauthenticatedError):
            registry.ui_session(session_id)
        second, _session, _token = registry.open_ui_session(token)
        registry.revoke_token(record.id)
        with pytest.raises(UnauthenticatedError):
            registry.ui_session(second)
        with pytest.raises(UnauthenticatedError):
            registry.open_ui_session(token)
        for wrong in ("", "x" * 200, "unknown"):
            with pytest.raises(UnauthenticatedError):
                registry.ui_session(wrong)


def test_migration_0011_upgrades_a_catalog_at_0010(tmp_path: Path, catalog_url: str | None) -> None:
    from alembic import command

    engine = create_catalog_engine(catalog_url or f"sqlite:///{tmp_path / 'old.db'}")
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0010")
    assert current_revision(engine) == "0010"
    assert not inspect(engine).has_table("ui_sessions")
    Catalog(engine).commit_version(_version("org/old", "1"))
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION
    indexes = {index["name"] for index in inspect(engine).get_indexes("audit_events")}
    assert {"ix_audit_events_actor_id", "ix_audit_events_action_id"} <= indexes
    catalog = Catalog(engine)
    assert [e.action for e in catalog.audit_page(actor="seeder")] == ["push"]
    now = datetime.now(UTC)
    catalog.open_ui_session(
        "h", UiSessionRecord("t", "c", now, now, now + timedelta(hours=1)), idle_before=now
    )
    assert catalog.ui_session("h") is not None
    # And back: the downgrade drops what the upgrade added, and the upgrade applies again.
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0010")
    assert not inspect(engine).has_table("ui_sessions")
    migrate(engine)
    assert inspect(engine).has_table("ui_sessions") and catalog.ui_session("h") is None
    catalog.close()


def test_retention_decisions_of_a_page_are_the_whole_plan_s(catalog: Catalog) -> None:
    """A page's decisions are read from the page's versions alone (and how many live ones are
    newer): they must be exactly what planning the whole model decides for them."""
    from registry.retention import Policy

    name = "org/kept"
    for key in range(1, 13):
        catalog.commit_version(_version(name, str(key)))
    catalog.set_retention(name, Policy(keep_last=4), actor="admin")
    _promote(catalog, name, "production", 2)
    _promote(catalog, name, "production", 5)
    with catalog.engine.begin() as connection:  # a tombstone among them: ranks skip it
        connection.execute(
            update(Version)
            .where(Version.manifest_object == "manifests/11")
            .values(expired_at=datetime.now(UTC), expired_by="admin", expiry_reason="bad")
        )
    now = datetime.now(UTC)
    _policy, whole = catalog.retention_plan(name, now=now, locked_for=None)
    expected = {d.number: d for d in whole}
    assert expected[12].keep and not expected[6].keep and expected[5].keep  # the rules bite
    for page in ([12, 11, 10], [9, 8, 7, 6], [5, 4, 3], [2, 1], [11], [7]):
        decided = catalog.retention_decisions(name, page, now=now, locked_for=None)
        assert decided == {n: expected[n] for n in page if n in expected}, page
