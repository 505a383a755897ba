"""A fault-injecting TCP proxy: put a misbehaving network (hung, slow, resetting, refusing or
overloaded) in front of one S3 server on loopback, and change how it misbehaves at any moment.

Standard library only, background daemon threads, two per connection (one per direction). Every
blocking call wakes every `_TICK` seconds, so that mode changes reach connections that are already
open (boto3 keeps its connections alive) and `stop()` never waits on a hung client or server.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

PASS = "pass"
FREEZE = "freeze"
TRICKLE = "trickle"
RESET_AFTER = "reset_after"
REFUSE = "refuse"
FAIL_503 = "fail_503"

_TICK = 0.1
_CHUNK = 65536
# The most one send may carry in pass mode: a mode change waits for at most one slice in flight.
_SLICE = 16384
# Trickled data leaves in this many slices a second: smooth enough, and few wake-ups.
_TRICKLE_STEPS = 20
# How long a 503 answer waits for the rest of a request (or the client's close) to arrive.
_QUIET = 1.0
_MAX_HEAD = 65536
_STOP_WAIT = 2.0

_REQUEST_LINE = re.compile(rb"[A-Z]+ [^ \r\n]+ HTTP/1\.[01]\r\n")
_REQUEST_LINE_SO_FAR = re.compile(rb"[A-Z]+( [^\r\n]*)?")

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>faultproxy</RequestId></Error>"
)


@dataclass(frozen=True)
class _State:
    mode: str
    arg: int
    # Bumped by every change, so that reset_after counts from the moment it was set.
    generation: int


class _Link:
    """One client connection and, once something has to be forwarded, its upstream connection."""

    def __init__(self, client: socket.socket, frozen: bool) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.frozen = frozen
        self.answering = False
        self.closed = False
        self.lock = threading.Lock()
        # The upstream pump and a 503 answer both write to the client; never interleaved.
        self.send_lock = threading.Lock()
        self.half_closed: set[str] = set()
        self.reset_generation = -1
        self.reset_sent = 0


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def _close(sock: socket.socket, reset: bool) -> None:
    if reset:
        # Linger on with a zero timeout turns close() into a RST instead of a FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A thread blocked in recv() on this socket keeps it alive until it wakes; shutting down
    # the read side wakes it now (and, unlike SHUT_WR, sends no FIN ahead of a RST).
    _shutdown(sock, socket.SHUT_RD if reset else socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _no_count(nbytes: int, to_client: bool) -> None:
    pass


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of one upstream (host, port); its fault mode can change
    at any time and applies to connections already open as well as new ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._state = _State(PASS, 0, 0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._port = 0
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._bytes_to_client = 0
        self._bytes_to_upstream = 0
        self._answered_503 = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("FaultProxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(_TICK)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self) -> None:
        """Close the listener and every connection; returns within about two seconds."""
        self._stopping.set()
        listener = self._listener
        if listener is not None:
            _shutdown(listener, socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            links = list(self._links)
            threads = list(self._threads)
        for link in links:
            self._close_link(link, reset=False)
        deadline = time.monotonic() + _STOP_WAIT
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where and what --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._state.mode

    @property
    def connections(self) -> int:
        """Client connections accepted so far (refused ones included)."""
        return self._connections

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    @property
    def bytes_to_client(self) -> int:
        """Bytes forwarded from upstream to clients (the proxy's own 503 answers not included)."""
        return self._bytes_to_client

    @property
    def bytes_to_upstream(self) -> int:
        return self._bytes_to_upstream

    @property
    def answered_503(self) -> int:
        """Requests answered (or being answered) with the proxy's own 503."""
        return self._answered_503

    # -- modes -----------------------------------------------------------------------------

    def heal(self) -> None:
        """Forward everything. Connections frozen earlier stay frozen; new ones work."""
        self._set(PASS)

    def freeze(self) -> None:
        """Read what clients send, forward nothing and answer nothing, on open connections and
        new ones, until the clients' own timeouts: a hung server. A connection frozen stays
        frozen after heal() (its requests were swallowed, their answers will never come)."""
        self._set(FREEZE)
        for link in self._open_links():
            self._freeze_link(link)

    def trickle(self, bytes_per_second: int = 10_000) -> None:
        """Forward at most `bytes_per_second` per connection and direction: a slow link."""
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self._set(TRICKLE, bytes_per_second)

    def reset_after(self, nbytes: int) -> None:
        """Forward `nbytes` more upstream->client bytes on each connection (counted from now,
        or from its opening), then reset it (RST): a reset in the middle of a body."""
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        self._set(RESET_AFTER, nbytes)

    def refuse(self) -> None:
        """Reset open connections now, and new ones as soon as the client has sent something
        (or after `_TICK` seconds of silence): a crashed server whose port still answers RST."""
        self._set(REFUSE)
        for link in self._open_links():
            self._close_link(link, reset=True)

    def fail_503(self) -> None:
        """Answer every request that starts from now on with 503 SlowDown (an S3 XML error,
        Connection: close) without contacting upstream; a request or response already under way
        on an open connection finishes first."""
        self._set(FAIL_503)

    def _set(self, mode: str, arg: int = 0) -> None:
        with self._lock:
            self._state = _State(mode, arg, self._state.generation + 1)

    # -- plumbing --------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            # Finished threads are dropped here so that long benchmarks do not pile them up.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _open_links(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _running(self, link: _Link) -> bool:
        return not (self._stopping.is_set() or link.closed)

    def _count(self, nbytes: int, to_client: bool) -> None:
        with self._lock:
            if to_client:
                self._bytes_to_client += nbytes
            else:
                self._bytes_to_upstream += nbytes

    def _close_link(self, link: _Link, reset: bool) -> None:
        with link.lock:
            if link.closed:
                return
            link.closed = True
            upstream = link.upstream
        _close(link.client, reset)
        if upstream is not None:
            _close(upstream, reset=False)
        with self._lock:
            self._links.discard(link)

    def _half_close(self, link: _Link, side: str) -> None:
        """One direction has ended (its sender closed); the link closes once both have."""
        with link.lock:
            link.half_closed.add(side)
            both = len(link.half_closed) == 2
        if both:
            self._close_link(link, reset=False)

    def _detach_upstream(self, link: _Link) -> None:
        # Closing the upstream socket wakes its pump, which sees why and leaves the client alone.
        with link.lock:
            upstream, link.upstream = link.upstream, None
        if upstream is not None:
            _close(upstream, reset=False)

    def _freeze_link(self, link: _Link) -> None:
        link.frozen = True
        self._detach_upstream(link)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                # Out of descriptors or a client gone before accept: try again shortly.
                self._stopping.wait(_TICK)
                continue
            with self._lock:
                self._connections += 1
            state = self._state
            try:
                sock.settimeout(_TICK)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                _close(sock, reset=False)
                continue
            link = _Link(sock, frozen=state.mode == FREEZE)
            with self._lock:
                if self._stopping.is_set():
                    _close(sock, reset=False)
                    return
                self._links.add(link)
            self._spawn(self._client_pump, "faultproxy-client", link)

    def _connect_upstream(self, link: _Link) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=2.0)
            upstream.settimeout(_TICK)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            # Nobody there: the client sees its connection reset, as from a dead server.
            self._close_link(link, reset=True)
            return
        with link.lock:
            usable = not (link.closed or link.frozen)
            if usable:
                link.upstream = upstream
        if usable:
            self._spawn(self._upstream_pump, "faultproxy-upstream", link, upstream)
        else:
            _close(upstream, reset=False)

    def _recv(self, link: _Link, sock: socket.socket, quiet: float | None = None) -> bytes | None:
        """The next bytes; b"" once the peer has closed (or failed); None when `quiet` seconds
        passed without any, or the link or proxy closed."""
        deadline = None if quiet is None else time.monotonic() + quiet
        while self._running(link):
            try:
                return sock.recv(_CHUNK)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            except OSError:
                return b""
        return None

    # -- client -> upstream ----------------------------------------------------------------

    def _client_pump(self, link: _Link) -> None:
        while True:
            try:
                data = link.client.recv(_CHUNK)
            except TimeoutError:
                if not self._running(link):
                    return
                if self._state.mode == REFUSE:
                    self._close_link(link, reset=True)
                    return
                continue
            except OSError:
                self._close_link(link, reset=False)
                return
            if not self._running(link):
                return
            if not data:
                upstream = link.upstream
                if link.frozen or upstream is None:
                    self._close_link(link, reset=False)
                    return
                # A half close: the response may still be on its way back.
                _shutdown(upstream, socket.SHUT_WR)
                self._half_close(link, "client")
                return
            state = self._state
            if state.mode == REFUSE:
                # Reset once the request is in: the client then always meets the RST reading
                # the answer, instead of sometimes sending the request (a racy, different error).
                self._close_link(link, reset=True)
                return
            if state.mode == FREEZE and not link.frozen:
                self._freeze_link(link)
            if link.frozen:
                continue  # swallowed, as by a hung server
            if state.mode == FAIL_503:
                data = self._request_line(link, data)
                if _REQUEST_LINE.match(data):
                    self._answer_503(link, data)
                    return
                # Not the start of a request: the rest of one begun before fail_503(); let it
                # finish upstream.
            if link.upstream is None:
                self._connect_upstream(link)
                if not self._running(link):
                    return
            upstream = link.upstream
            if upstream is None:
                continue  # frozen while connecting: dropped
            if not self._send(link, upstream, data, to_client=False):
                return

    def _request_line(self, link: _Link, data: bytes) -> bytes:
        """`data`, with more read until it holds a whole first line if it may be a request's."""
        while (
            b"\r\n" not in data
            and len(data) < _MAX_HEAD
            and _REQUEST_LINE_SO_FAR.fullmatch(data) is not None
        ):
            more = self._recv(link, link.client, quiet=_QUIET)
            if not more:
                break
            data += more
        return data

    def _answer_503(self, link: _Link, data: bytes) -> None:
        link.answering = True
        self._detach_upstream(link)
        method = self._read_request(link, data)
        body = b"" if method == b"HEAD" else SLOW_DOWN_BODY
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(SLOW_DOWN_BODY)}\r\n"
            "x-amz-request-id: faultproxy\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with self._lock:
            self._answered_503 += 1  # before it leaves: the client may look once it has it
        with link.send_lock:
            answer = memoryview(head + body)
            sent = self._send_all(link, link.client, answer, to_client=True, forwarded=False)
        if not sent:
            return
        # Read whatever else the client sends until it closes: closing with unread bytes would
        # reset the connection and could destroy the answer before the client reads it.
        _shutdown(link.client, socket.SHUT_WR)
        deadline = time.monotonic() + _QUIET
        while time.monotonic() < deadline and self._recv(link, link.client, quiet=_QUIET):
            pass
        self._close_link(link, reset=False)

    def _read_request(self, link: _Link, data: bytes) -> bytes:
        """Read the rest of the request that `data` starts (head and body) and return its
        method; gives up on what is still missing after `_QUIET` seconds without a byte."""
        while b"\r\n\r\n" not in data and len(data) < _MAX_HEAD:
            more = self._recv(link, link.client, quiet=_QUIET)
            if not more:
                break
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method = lines[0].split(b" ", 1)[0]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"100-continue" in headers.get(b"expect", b""):
            return method  # the client sends no body before it sees an answer
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            tail = body[-5:]
            while not tail.endswith(b"0\r\n\r\n"):
                more = self._recv(link, link.client, quiet=_QUIET)
                if not more:
                    break
                tail = (tail + more)[-5:]
            return method
        try:
            missing = int(headers.get(b"content-length", b"0")) - len(body)
        except ValueError:
            missing = 0
        while missing > 0:
            more = self._recv(link, link.client, quiet=_QUIET)
            if not more:
                break
            missing -= len(more)
        return method

    # -- upstream -> client ----------------------------------------------------------------

    def _upstream_pump(self, link: _Link, upstream: socket.socket) -> None:
        while True:
            try:
                data = upstream.recv(_CHUNK)
            except TimeoutError:
                if not self._running(link) or link.upstream is not upstream:
                    return
                continue
            except OSError:
                data = None
            if not self._running(link) or link.upstream is not upstream:
                return  # closed, frozen or answering 503: not this pump's business any more
            if data is None:
                # The server reset or failed: so does the client's connection.
                self._close_link(link, reset=True)
                return
            if not data:
                _shutdown(link.client, socket.SHUT_WR)
                self._half_close(link, "upstream")
                return
            if not self._send(link, link.client, data, to_client=True):
                return

    # -- sending under the current mode ----------------------------------------------------

    def _send(self, link: _Link, dst: socket.socket, data: bytes, to_client: bool) -> bool:
        """Forward `data` slice by slice, each under the mode of the moment; False when the
        pump should end: the link closed, or froze under the upstream pump."""
        view = memoryview(data)
        while view:
            if not self._running(link):
                return False
            state = self._state
            if state.mode == FREEZE and not link.frozen:
                self._freeze_link(link)
            if link.frozen:
                # The rest is dropped; the client pump goes on swallowing what clients send.
                return not to_client
            if state.mode == REFUSE:
                self._close_link(link, reset=True)
                return False
            size = min(len(view), _SLICE)
            if state.mode == TRICKLE:
                size = min(size, max(1, state.arg // _TRICKLE_STEPS))
            resetting = state.mode == RESET_AFTER and to_client
            if resetting:
                if link.reset_generation != state.generation:
                    link.reset_generation = state.generation
                    link.reset_sent = 0
                size = min(size, state.arg - link.reset_sent)
                if size <= 0:
                    self._close_link(link, reset=True)
                    return False
            if to_client:
                with link.send_lock:
                    if link.answering:
                        return False
                    if not self._send_all(link, dst, view[:size], to_client=True):
                        return False
            elif not self._send_all(link, dst, view[:size], to_client=False):
                return link.frozen and self._running(link)
            view = view[size:]
            if resetting:
                link.reset_sent += size
                if link.reset_sent >= state.arg:
                    self._close_link(link, reset=True)
                    return False
            if state.mode == TRICKLE:
                self._pause(size / state.arg, state)
        return True

    def _pause(self, seconds: float, state: _State) -> None:
        """Sleep `seconds`, or less if the mode changes or the proxy stops meanwhile."""
        deadline = time.monotonic() + seconds
        while self._state is state and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, _TICK))

    def _send_all(
        self,
        link: _Link,
        dst: socket.socket,
        view: memoryview,
        to_client: bool,
        forwarded: bool = True,
    ) -> bool:
        """Send all of `view` (counting it if `forwarded`); False if the link ended first."""
        count = self._count if forwarded else _no_count
        while view:
            if not self._running(link) or (link.frozen and not link.answering):
                return False
            # Counted before they leave, taken back if they do not: the peer can read them before
            # send() returns, and must not find the counter behind what it has read.
            count(len(view), to_client)
            try:
                sent = dst.send(view)
            except TimeoutError:
                count(-len(view), to_client)
                continue  # the receiver is not reading; look at the link again and retry
            except OSError:
                count(-len(view), to_client)
                # A client gone ends the link quietly; a server gone resets the client.
                if self._running(link) and (to_client or link.upstream is dst):
                    self._close_link(link, reset=not to_client)
                return False
            count(sent - len(view), to_client)
            view = view[sent:]
        return True
