"""The server fleet's shared limit counts in Redis (`[api] shared_state = "redis://..."`): add
one process's counts and read back the fleet's in one pipelined round trip per swap, and claim
a signal for one window.

One hash per kind and key (`<prefix>c:<kind>:<key>`), a field per slot and item
(`<slot>:<item>`): a swap is an HINCRBY per count and an HGETALL per wanted key. Fields of slots
that no longer matter are deleted by the next swap that reads them, and a hash nobody counts in
expires after its kind's lifetime, so Redis holds only live windows. A signal is a key set with
NX and the window as its expiry: the one process whose SET succeeds raises it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.exceptions import RedisError

from registry.errors import StorageError
from registry.records import CountCell, CountSpan

# A swap runs every fraction of a second on its own thread; a request claiming a signal waits
# for Redis: neither may hang on a Redis that stopped answering.
_TIMEOUT = 0.5


class RedisCounters:
    """The fleet's counts in Redis, under `prefix` (one registry's keys apart from another's
    in a shared Redis)."""

    def __init__(self, url: str, *, prefix: str) -> None:
        self._where = url.split("@")[-1]  # never a password in a message
        self._prefix = prefix
        self._stale: list[tuple[str, str]] = []  # (hash, field) to delete at the next swap
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
            )
        except ValueError as error:
            raise StorageError(
                f"shared limits: invalid Redis URL: {error}",
                hint='[api] shared_state, e.g. "redis://127.0.0.1:6379/0"',
            ) from None

    def _unavailable(self, error: RedisError) -> StorageError:
        return StorageError(
            f"shared limits: Redis at {self._where} unavailable: {error}",
            hint="check that Redis is reachable ([api] shared_state in config.toml)",
        )

    def _hash(self, kind: str, key: str) -> str:
        return f"{self._prefix}c:{kind}:{key}"

    def exchange(
        self, deltas: Mapping[CountCell, int], wanted: Mapping[str, CountSpan]
    ) -> dict[CountCell, int]:
        """Add `deltas` to the fleet's counts, then read the fleet's counts of every wanted
        key from its oldest slot on (what this process just added included)."""
        pipe = self._client.pipeline(transaction=False)
        stale, self._stale = self._stale, []
        for name, field in stale:
            pipe.hdel(name, field)
        for (kind, key, item, slot), count in deltas.items():
            if count:
                name = self._hash(kind, key)
                pipe.hincrby(name, f"{slot}:{item}", count)
                span = wanted.get(kind)
                pipe.expire(name, max(1, round(span.lifetime if span else 3600.0)))
        asked = [(kind, key, span.oldest) for kind, span in wanted.items() for key in span.keys]
        for kind, key, _oldest in asked:
            pipe.hgetall(self._hash(kind, key))
        try:
            answers = pipe.execute()
        except RedisError as error:
            self._stale = stale + self._stale
            raise self._unavailable(error) from None
        found: dict[CountCell, int] = {}
        read_back = answers[len(answers) - len(asked) :]
        for (kind, key, oldest), fields in zip(asked, read_back, strict=True):
            for raw, count in fields.items():
                slot_text, _, item = raw.decode().partition(":")
                slot = int(slot_text)
                if slot >= oldest:
                    found[(kind, key, item, slot)] = int(count)
                else:
                    self._stale.append((self._hash(kind, key), raw.decode()))
        return found

    def claim(self, kind: str, key: str, *, now: float, window: float) -> bool:
        """Whether this process raises signal `kind` for `key` now: no process has raised it
        within the last `window` seconds (then it is recorded as raised now)."""
        try:
            return bool(
                self._client.set(
                    f"{self._prefix}s:{kind}:{key}", repr(now), nx=True, px=int(window * 1000)
                )
            )
        except RedisError as error:
            raise self._unavailable(error) from None

    def close(self) -> None:
        self._client.close()
