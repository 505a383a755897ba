"""A round-robin TCP load balancer on loopback for tests: each new connection goes to the next
upstream in turn, skipping one that refuses (a killed server process), as a load balancer in front
of a fleet of API servers does. Standard library only; two daemon threads per connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from types import TracebackType

_CHUNK = 1 << 16


class RoundRobin:
    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self.connections: Counter[int] = Counter()  # by upstream index
        self.bytes_up: Counter[int] = Counter()  # request bytes forwarded, by upstream index
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> RoundRobin:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> tuple[int, socket.socket] | None:
        for _ in range(len(self.upstreams)):
            with self._lock:
                index = self._next
                self._next = (self._next + 1) % len(self.upstreams)
            try:
                upstream = socket.create_connection(self.upstreams[index], timeout=5)
            except OSError:
                continue  # down: the next one
            upstream.settimeout(None)
            with self._lock:
                self.connections[index] += 1
            return index, upstream
        return None

    def _serve(self, client: socket.socket) -> None:
        chosen = self._connect()
        if chosen is None:
            client.close()
            return
        index, upstream = chosen

        def pipe(source: socket.socket, target: socket.socket, counted: bool) -> None:
            try:
                while data := source.recv(_CHUNK):
                    target.sendall(data)
                    if counted:
                        with self._lock:
                            self.bytes_up[index] += len(data)
            except OSError:
                pass
            finally:
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()
        pipe(client, upstream, True)
        for sock in (client, upstream):
            sock.close()
