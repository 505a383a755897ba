"""The server fleet's shared limit counts: which store holds them (`[api] shared_state`: the
catalog's database, or Redis), swapping one process's counts for the fleet's, and claiming a
signal so that it is raised once per window across the fleet. The counting and deciding is the
API's (`registry.api.limits`); this is where its counts meet the other processes'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from registry.config import Settings
from registry.errors import ConfigurationError, InvalidInputError
from registry.ops.access import requires
from registry.ops.context import Context
from registry.records import CountCell, CountSpan

if TYPE_CHECKING:
    from registry.catalog.repository import Catalog
    from registry.ops.context import OnFirstUse


class CounterStore(Protocol):
    """What holds the fleet's counts (`registry.catalog.counters`, `registry.redis_counters`)."""

    def exchange(
        self, deltas: Mapping[CountCell, int], wanted: Mapping[str, CountSpan]
    ) -> dict[CountCell, int]: ...

    def claim(self, kind: str, key: str, *, now: float, window: float) -> bool: ...


def open_store(settings: Settings, catalog: OnFirstUse[Catalog]) -> CounterStore:
    """The store `[api] shared_state` names (the catalog's is opened with the catalog)."""
    where = settings.api.shared_store(settings.catalog_url)
    if where == "memory":
        raise InvalidInputError(
            "[api] shared_state is memory: this process shares no counts",
            hint='set shared_state = "catalog" or a Redis URL to share them',
        )
    if where == "catalog":
        from registry.catalog.counters import CatalogCounters

        return CatalogCounters(catalog.get().engine)
    try:
        from registry.redis_counters import RedisCounters
    except ImportError:
        raise ConfigurationError(
            "[api] shared_state names Redis, but the redis client is not installed",
            hint="pip install 'model-registry[redis]'",
        ) from None
    return RedisCounters(where, prefix=f"model-registry:{settings.registry_id}:")


def close_store(store: CounterStore | None) -> None:
    """Close the Redis connections (the catalog's store is closed with the catalog)."""
    if store is None:
        return  # never opened: nothing to import either
    from registry.redis_counters import RedisCounters

    if isinstance(store, RedisCounters):
        store.close()


@requires("share-limits")
def exchange_counts(
    ctx: Context, deltas: Mapping[CountCell, int], wanted: Mapping[str, CountSpan]
) -> dict[CountCell, int]:
    """Add this process's `deltas` to the fleet's counts; the fleet's counts of the `wanted`
    keys (this process's included). StorageError when the store does not answer: nothing of
    `deltas` was added then, and the caller sends them again."""
    return ctx.home.opened_counters.get().exchange(deltas, wanted)


@requires("share-limits")
def claim_signal(ctx: Context, kind: str, key: str, *, now: float, window: float) -> bool:
    """Whether this process raises signal `kind` for `key` (Unix time `now`): True for the one
    process that claims it first in a `window`, False for every other."""
    return ctx.home.opened_counters.get().claim(kind, key, now=now, window=window)
