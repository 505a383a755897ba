"""HTTP for `RemoteRegistry`: keep-alive connections in one pool shared by every thread, the
answers, the server's error codes mapped back to the registry's errors, and `Retry-After`."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from registry.errors import InvalidInputError, RegistryError

IDLE_REUSE = 2.0  # seconds a keep-alive connection may idle before it is replaced


def error_classes() -> dict[str, type[RegistryError]]:
    found: dict[str, type[RegistryError]] = {}
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


ERRORS = error_classes()


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class Transport:
    """Keep-alive HTTP/1.1 connections in a pool shared by every thread (the standard library's
    client moves large bodies about twice as fast as httpx here, docs/benchmarks.md): a request
    takes an idle connection, or opens one, and gives it back once its answer is read, so the
    number of connections is the number of requests in flight, however many threads come and
    go."""

    def __init__(self, url: str, token: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise InvalidInputError(f"invalid registry URL {url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._auth = f"Bearer {token}"
        self._timeout = timeout
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def _take(self, timeout: float | None) -> http.client.HTTPConnection:
        now = time.monotonic()
        with self._lock:
            while self._idle:
                connection, since = self._idle.pop()
                if now - since <= IDLE_REUSE:
                    connection.timeout = timeout
                    if connection.sock is not None:
                        connection.sock.settimeout(timeout)
                    return connection
                # Servers close idle keep-alive connections (uvicorn after 5 s); a request sent
                # on one just closed fails, and a POST cannot be safely sent again.
                connection.close()
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | memoryview | None,
        headers: dict[str, str],
        *,
        wait: bool = False,
    ) -> Response:
        """One request; with `wait`, no time limit on the answer (a commit that encrypts and
        stores a large model inside its request)."""
        connection = self._take(None if wait else self._timeout)
        try:
            connection.request(
                method,
                self._base + target,
                body=body,
                headers={"Authorization": self._auth, **headers},
            )
            answer = connection.getresponse()
            content = answer.read()
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            with self._lock:
                self._idle.append((connection, time.monotonic()))
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, content)

    def close(self) -> None:
        with self._lock:
            for connection, _since in self._idle:
                connection.close()
            self._idle.clear()


def retry_after(value: str | None) -> float:
    """Seconds to wait for a 429: the header's number (a date or garbage counts as 1), at
    least 0.2 s so that a proxy's `Retry-After: 0` does not make a busy loop, at most 30 s."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(30.0, max(0.2, seconds))
