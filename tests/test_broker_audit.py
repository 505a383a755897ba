"""The key broker's accounting under load (`catalog.groupcommit`): concurrent calls share
transactions, yet each call's audit entry (version, keys, unwraps, token) is in the trail before
its keys are returned, and the chain verifies, on SQLite and PostgreSQL; a transaction that fails
before it commits fails every call it held: no key leaves unaccounted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from registry.catalog.audit import AuditEntry
from registry.catalog.groupcommit import GroupCommit
from registry.catalog.models import JournalEntry
from registry.errors import StorageError
from registry.reports import BrokeredKeys
from registry.service import READER, Registry
from registry.testing.models import make_model

CALLS = 12


def _journal_entries(registry: Registry) -> int:
    """The catalog's write transactions so far: each one adds one outbox entry."""
    with registry.catalog.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(JournalEntry)).scalar_one())


def _broker_events(registry: Registry) -> list[Any]:
    return [e for e in registry.audit_events(limit=1000) if e.action == "key-broker"]


def _hold_first_commit(
    monkeypatch: pytest.MonkeyPatch, registry: Registry, *, then: Callable[[], None] | None = None
) -> threading.Event:
    """Hold the first audit transaction until the other calls have queued behind it (so the
    grouping under test happens on every run, not by chance); `then` runs in its place after
    the wait (an injected failure). Set the event returned to release it early."""
    group: GroupCommit[AuditEntry] = registry.catalog.audit_writes
    real = registry.catalog.append_audits
    release = threading.Event()
    first = [True]

    def held(entries: Sequence[AuditEntry]) -> None:
        if first[0]:
            first[0] = False
            deadline = time.monotonic() + 30
            while group.queued < CALLS - 1 and time.monotonic() < deadline:
                if release.wait(0.01):
                    break
            if then is not None:
                then()
        real(entries)

    monkeypatch.setattr(group, "_commit", held)
    return release


@pytest.fixture
def served(home: Path, tmp_path: Path, catalog_url: str | None) -> Registry:
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        registry.push("org/m", make_model(tmp_path / "m", shards=3, shard_size=10_000, seed=3))
    return Registry.open(home)


def test_concurrent_broker_calls_share_transactions_each_audited(
    served: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served as registry:
        tokens = [
            registry.create_token(f"node-{i}", role=READER, models=["org/*"]) for i in range(CALLS)
        ]
        views = [registry.acting_as(record) for record, _text in tokens]
        _hold_first_commit(monkeypatch, registry)
        transactions = _journal_entries(registry)
        with ThreadPoolExecutor(CALLS) as pool:
            brokered = list(
                pool.map(
                    lambda i: views[i].broker_keys("org/m@1", token=tokens[i][0].id), range(CALLS)
                )
            )
        # Twelve calls, two transactions: the first alone, the eleven queued behind it together.
        assert _journal_entries(registry) - transactions == 2
        assert registry.catalog.audit_writes.transactions >= 2
        events = {e.details["token"]: e for e in _broker_events(registry)}
        assert set(events) == {record.id for record, _text in tokens}
        for (record, _text), view, answer in zip(tokens, views, brokered, strict=True):
            event = events[record.id]
            assert event.actor == view.actor and event.subject == "org/m"
            assert event.details["version"] == 1
            objects = 1 + len({f.digest for f in answer.version.files})  # and the manifest
            assert event.details["keys"] == len(answer.keys) == objects
            assert event.details["key_unwraps"] == answer.unwraps == view.unwraps == objects
        assert registry.verify_audit().ok
        ids = sorted(e.id for e in registry.audit_events(limit=1000))
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # one chain, no gap


def test_a_broker_call_returns_no_key_before_its_entry_is_committed(
    served: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served as registry:
        record, _text = registry.create_token("node", role=READER, models=["org/*"])
        view = registry.acting_as(record)
        real = registry.catalog.append_audits
        seen: list[int] = []

        def commit(entries: Sequence[AuditEntry]) -> None:
            real(entries)
            seen.append(len(_broker_events(registry)))

        monkeypatch.setattr(registry.catalog.audit_writes, "_commit", commit)
        before = len(_broker_events(registry))
        view.broker_keys("org/m@1", token=record.id)
        # Alone, the call committed its own entry at once, before it returned.
        assert seen == [before + 1]


@pytest.mark.parametrize("failure", [StorageError("the catalog went away"), KeyboardInterrupt()])
def test_a_failed_audit_transaction_hands_out_no_key(
    served: Registry, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    with served as registry:
        tokens = [
            registry.create_token(f"node-{i}", role=READER, models=["org/*"]) for i in range(CALLS)
        ]
        views = [registry.acting_as(record) for record, _text in tokens]
        failed = [True]

        def crash() -> None:
            if failed[0]:
                failed[0] = False
                raise failure

        _hold_first_commit(monkeypatch, registry, then=crash)
        before = len(_broker_events(registry))
        answers: list[BrokeredKeys] = []
        errors: list[BaseException] = []

        def call(index: int) -> None:
            try:
                answers.append(views[index].broker_keys("org/m@1", token=tokens[index][0].id))
            except BaseException as error:  # noqa: BLE001 - the interrupt is what is tested
                errors.append(error)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)  # nobody left waiting
        # The first transaction held only the first call: it failed, without its keys...
        assert len(errors) == 1 and len(answers) == CALLS - 1
        assert errors[0] is failure
        # ...and every key handed out is accounted for, each call once.
        events = _broker_events(registry)[: len(_broker_events(registry)) - before]
        assert len(events) == len(answers)
        assert sorted(e.details["token"] for e in events) == sorted(
            record.id for record, _text in tokens if record.id != _failed_token(tokens, events)
        )
        assert registry.verify_audit().ok
        # The writer is free again: the next call commits.
        views[0].broker_keys("org/m@1", token=tokens[0][0].id)
        assert len(_broker_events(registry)) == before + len(answers) + 1


def _failed_token(tokens: Sequence[tuple[Any, str]], events: Sequence[Any]) -> str:
    audited = {e.details["token"] for e in events}
    missing = [record.id for record, _text in tokens if record.id not in audited]
    assert len(missing) == 1
    return missing[0]


def test_a_failed_group_fails_every_call_it_held(
    served: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with served as registry:
        tokens = [
            registry.create_token(f"node-{i}", role=READER, models=["org/*"]) for i in range(CALLS)
        ]
        views = [registry.acting_as(record) for record, _text in tokens]
        group = registry.catalog.audit_writes
        real = registry.catalog.append_audits
        calls = [0]

        def second_fails(entries: Sequence[AuditEntry]) -> None:
            calls[0] += 1
            if calls[0] == 1:
                deadline = time.monotonic() + 30
                while group.queued < CALLS - 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                real(entries)
            else:
                raise StorageError("the catalog went away")  # before the commit

        monkeypatch.setattr(group, "_commit", second_fails)
        before = len(_broker_events(registry))
        outcomes: list[object] = []

        def call(index: int) -> None:
            try:
                outcomes.append(views[index].broker_keys("org/m@1", token=tokens[index][0].id))
            except StorageError as error:
                outcomes.append(error)

        with ThreadPoolExecutor(CALLS) as pool:
            list(pool.map(call, range(CALLS)))
        answered = [o for o in outcomes if isinstance(o, BrokeredKeys)]
        assert len(answered) == 1 and len(outcomes) == CALLS
        assert all(isinstance(o, StorageError) for o in outcomes if o not in answered)
        assert len(_broker_events(registry)) == before + 1
        assert registry.verify_audit().ok
