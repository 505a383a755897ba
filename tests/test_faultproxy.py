"""The fault proxy of the S3 fault tests: each mode against a tiny keep-alive HTTP server on
loopback (exact bytes and timings), and botocore's view of each mode against moto."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from moto.server import ThreadedMotoServer

from tests.faultproxy import SLOW_DOWN_BODY, FaultProxy

BODY = bytes(range(256)) * 4096  # 1 MiB, every offset recognisable modulo 256


class _Handler(BaseHTTPRequestHandler):
    """GET /bytes/N: the first N bytes of BODY; PUT: answers with the length it read."""

    protocol_version = "HTTP/1.1"  # keep-alive, as S3 servers
    server: _Upstream

    def do_GET(self) -> None:
        self.server.count()
        body = BODY[: int(self.path.rsplit("/", 1)[1])]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        self.server.count()
        length = len(self.rfile.read(int(self.headers["Content-Length"])))
        answer = str(length).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler on a kept-alive connection must not hold up the test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests = 0
        self._lock = threading.Lock()

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connections the proxy resets on purpose are no news


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", upstream.server_address[1])) as started:
        yield started


def _connection(proxy: FaultProxy, timeout: float = 2.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def _get(connection: http.client.HTTPConnection, size: int) -> bytes:
    connection.request("GET", f"/bytes/{size}")
    response = connection.getresponse()
    assert response.status == 200
    return response.read()


def _raw_get(proxy: FaultProxy, size: int, timeout: float = 2.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
    return sock


def _read_to_the_end(
    sock: socket.socket, timeout: float | None = None
) -> tuple[bytes, OSError | None]:
    """Everything the socket receives, and the error that ended it (None for a clean close)."""
    received = b""
    if timeout is not None:
        sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError as error:
        return received, error
    finally:
        sock.close()
    return received, None


def test_pass_forwards_both_ways_on_one_kept_alive_connection(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    connection = _connection(proxy)
    assert _get(connection, len(BODY)) == BODY
    assert _get(connection, 1000) == BODY[:1000]
    connection.request("PUT", "/upload", body=BODY[:300_000])
    assert connection.getresponse().read() == b"300000"
    connection.close()
    assert proxy.connections == 1
    assert upstream.requests == 3
    assert proxy.bytes_to_client > len(BODY) + 1000
    assert proxy.bytes_to_upstream > 300_000


def test_freeze_hangs_open_and_new_connections_and_heal_serves_only_new_ones(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    kept = _connection(proxy, timeout=0.5)
    assert _get(kept, 100) == BODY[:100]
    proxy.freeze()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _get(kept, 100)  # the open connection: its request is swallowed
    assert 0.4 < time.monotonic() - started < 1.5
    during = _raw_get(proxy, 100, timeout=0.3)  # a new connection: accepted, never answered
    with pytest.raises(TimeoutError):
        during.recv(1)
    proxy.heal()
    with pytest.raises(TimeoutError):
        during.recv(1)  # frozen stays frozen: that request is lost for good
    assert _get(_connection(proxy), 1000) == BODY[:1000]
    assert upstream.requests == 2  # the frozen requests never reached the server
    during.close()


def test_freeze_stops_a_response_midway(proxy: FaultProxy) -> None:
    proxy.trickle(100_000)
    sock = _raw_get(proxy, len(BODY))
    time.sleep(0.3)
    proxy.freeze()
    frozen_at = proxy.bytes_to_client
    assert 10_000 < frozen_at < 100_000
    time.sleep(0.3)
    assert proxy.bytes_to_client == frozen_at  # nothing more leaves, though more is there
    received, error = _read_to_the_end(sock, timeout=0.3)
    assert isinstance(error, TimeoutError)
    assert len(received) == frozen_at


def test_trickle_limits_the_rate_both_ways(proxy: FaultProxy) -> None:
    proxy.trickle(50_000)
    connection = _connection(proxy)
    started = time.monotonic()
    assert _get(connection, 100_000) == BODY[:100_000]
    assert 1.5 <= time.monotonic() - started < 6
    started = time.monotonic()
    connection.request("PUT", "/upload", body=BODY[:25_000])
    assert connection.getresponse().read() == b"25000"
    assert 0.35 <= time.monotonic() - started < 3
    proxy.heal()  # on the same connection: full speed again
    started = time.monotonic()
    assert _get(connection, len(BODY)) == BODY
    assert time.monotonic() - started < 1


def test_reset_after_resets_each_connection_after_exactly_that_many_bytes(
    proxy: FaultProxy,
) -> None:
    kept = _connection(proxy)
    assert _get(kept, 5000) == BODY[:5000]  # bytes before the mode change do not count
    proxy.reset_after(1000)
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        _get(kept, len(BODY))
    received, error = _read_to_the_end(_raw_get(proxy, len(BODY)))
    assert isinstance(error, ConnectionResetError)
    assert len(received) == 1000
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == BODY[: len(body)]


def test_refuse_resets_open_and_new_connections_quickly(proxy: FaultProxy) -> None:
    kept = _connection(proxy)
    assert _get(kept, 100) == BODY[:100]
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        _get(kept, 100)
    sock = _raw_get(proxy, 100)  # the TCP handshake still completes: the port answers
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    assert time.monotonic() - started < 1
    assert proxy.connections == 2
    proxy.heal()
    assert _get(_connection(proxy), 100) == BODY[:100]


def test_fail_503_answers_every_request_itself(proxy: FaultProxy, upstream: _Upstream) -> None:
    kept = _connection(proxy)
    assert _get(kept, 100) == BODY[:100]
    proxy.fail_503()
    for connection in (kept, _connection(proxy)):
        # An upload is read to its end before the answer: no broken pipe for the client.
        connection.request("PUT", "/upload", body=BODY[:300_000])
        response = connection.getresponse()
        body = response.read()
        assert response.status == 503
        assert response.getheader("Content-Type") == "application/xml"
        assert response.getheader("Connection") == "close"
        assert int(response.getheader("Content-Length", "0")) == len(body)
        assert body == SLOW_DOWN_BODY and b"<Code>SlowDown</Code>" in body
    head = _connection(proxy)
    head.request("HEAD", "/bytes/100")
    response = head.getresponse()
    assert response.status == 503 and response.read() == b""
    assert upstream.requests == 1
    assert proxy.answered_503 == 3


def test_stop_returns_fast_while_clients_and_upstream_hang() -> None:
    # An upstream that accepts (the kernel does) but never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        proxy = FaultProxy(silent.getsockname()).start()
        hung = _raw_get(proxy, 100, timeout=5)  # forwarded, never answered
        time.sleep(0.2)
        proxy.freeze()
        frozen = _raw_get(proxy, 100, timeout=5)
        time.sleep(0.2)
        started = time.monotonic()
        proxy.stop()
        proxy.stop()
        assert time.monotonic() - started < 1
        for sock in (hung, frozen):
            assert sock.recv(1) == b""  # closed, not left hanging
            sock.close()


@pytest.fixture
def moto_endpoint() -> Iterator[tuple[str, int]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


def test_botocore_against_moto_through_each_mode(moto_endpoint: tuple[str, int]) -> None:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    bucket = f"faultproxy-{uuid.uuid4().hex[:8]}"
    host, port = moto_endpoint
    # Set up directly: moto's first request may take longer than the tight timeouts below.
    direct: Any = session.client("s3", endpoint_url=f"http://{host}:{port}")
    direct.create_bucket(Bucket=bucket)
    direct.put_object(Bucket=bucket, Key="blob", Body=BODY)
    with FaultProxy(moto_endpoint) as proxy:
        # total_max_attempts=1 is one attempt; retries={"max_attempts": 1} would be two.
        config = Config(connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1})
        s3: Any = session.client("s3", endpoint_url=proxy.url, config=config)
        assert s3.get_object(Bucket=bucket, Key="blob")["Body"].read() == BODY

        def attempt(expected: type[Exception]) -> tuple[Any, float]:
            before, started = proxy.connections, time.monotonic()
            with pytest.raises(expected) as raised:
                s3.get_object(Bucket=bucket, Key="blob")["Body"].read()
            assert proxy.connections - before <= 1  # one attempt, on a kept or a new connection
            return raised.value, time.monotonic() - started

        proxy.fail_503()
        error, _ = attempt(ClientError)
        assert error.response["Error"]["Code"] == "SlowDown"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(ClientError, match="SlowDown"):
            s3.put_object(Bucket=bucket, Key="other", Body=BODY[:200_000])

        proxy.freeze()
        _, took = attempt(ReadTimeoutError)
        assert 0.9 < took < 2

        proxy.reset_after(1000)  # the headers get through, the body does not
        attempt(ResponseStreamingError)
        proxy.reset_after(100)
        attempt(ConnectionClosedError)

        proxy.refuse()
        _, took = attempt(ConnectionClosedError)
        assert took < 1

        proxy.heal()
        assert s3.get_object(Bucket=bucket, Key="blob")["Body"].read() == BODY
