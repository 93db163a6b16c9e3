"""Unbounded requests (issue 20, defect 2): bodies over the limit are refused before they
are read, oversized or too many headers get 431, slow senders are cut off, concurrency is
bounded — and the server keeps serving everyone else meanwhile."""

from __future__ import annotations

import socket
import time

import pytest

from tests.security.conftest import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONCURRENCY,
    ORG,
    RESET,
    Server,
    owner_of,
    read_until_closed,
    status_of,
)

pytestmark = pytest.mark.stack

CREDITS = f"/v1/orgs/{ORG}/credits".encode()


def request_head(path: bytes, *headers: bytes, method: bytes = b"POST") -> bytes:
    return b"\r\n".join([method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", *headers, b""])


def still_serving(server: Server) -> None:
    with server.client(timeout_s=5) as client:
        assert client.get("/metrics").status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(service: Server) -> None:
    # 100 MB announced, only the first KB sent, no token: answered at once, unread
    started = time.monotonic()
    head = request_head(CREDITS, b"Content-Type: application/json", b"Content-Length: 104857600")
    answer = service.raw(head + b"\r\n" + b"{" + b" " * 1024, timeout_s=5)
    assert status_of(answer) == 413, answer[:300]
    assert b'"detail"' in answer
    assert time.monotonic() - started < 3

    # Sent whole but over the limit, and chunked without a length: refused too
    with service.client() as client:
        big = client.post(
            CREDITS.decode(),
            content=b"{" + b" " * 8192 + b"}",
            headers={**owner_of(ORG), "Content-Type": "application/json"},
        )
        assert big.status_code == 413, big.text
        assert "detail" in big.json()
        chunks = client.post(
            CREDITS.decode(),
            content=iter([b" " * 3000] * 4),
            headers={**owner_of(ORG), "Content-Type": "application/json"},
        )
        assert chunks.status_code == 413, chunks.text
    still_serving(service)


def test_too_many_or_too_large_headers_get_431(service: Server) -> None:
    many = request_head(b"/metrics", *(b"X-Filler-%d: x" % i for i in range(5000)), method=b"GET")
    answer = service.raw(many + b"\r\n", timeout_s=5)
    assert status_of(answer) == 431, answer[:300]

    a_few_too_many = request_head(
        b"/metrics", *(b"X-F%d: x" % i for i in range(200)), method=b"GET"
    )
    assert status_of(service.raw(a_few_too_many + b"\r\n", timeout_s=5)) == 431

    # Refused at the limit, not read to the end: the server closes while the client is
    # still sending, which may reset the connection before the 431 can be read
    huge = request_head(b"/metrics", b"X-Huge: " + b"a" * (4 * 1024 * 1024), method=b"GET")
    answer = service.raw(huge + b"\r\n", timeout_s=10)
    assert status_of(answer) == 431 or answer == RESET, answer[:300]
    still_serving(service)


def test_slow_header_senders_are_cut_off_and_the_server_stays_within_its_limits(
    service: Server,
) -> None:
    """More half-open connections than the concurrency limit: other clients get a quick
    503 (never a hang) while they last, and the server closes them after the header
    timeout; then it serves normally again."""
    slow = []
    for _ in range(MAX_CONCURRENCY + 10):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=5)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    try:
        started = time.monotonic()
        with service.client(timeout_s=5) as client:
            answer = client.get("/metrics")
        assert answer.status_code in (200, 503), answer.text
        assert time.monotonic() - started < 2
        # Each one is closed by the server (with a 408, or without a word) in time
        deadline = started + HEADER_TIMEOUT_S + 3
        for sock in slow:
            data = read_until_closed(sock, max(deadline - time.monotonic(), 0.1))
            assert status_of(data) in (None, 408), data[:200]
            sock.settimeout(0.5)
            assert sock.recv(1) == b"", "a slow connection is still open"
    finally:
        for sock in slow:
            sock.close()
    still_serving(service)


def test_a_half_sent_body_is_cut_off(service: Server) -> None:
    head = request_head(CREDITS, b"Content-Type: application/json", b"Content-Length: 100")
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(head + b"\r\n" + b'{"purchase_')
        started = time.monotonic()
        answer = read_until_closed(sock, BODY_TIMEOUT_S + 4)
        assert time.monotonic() - started < BODY_TIMEOUT_S + 3, "the connection was held"
    assert status_of(answer) in (None, 408), answer[:300]
    still_serving(service)


def test_idle_connections_do_not_hold_the_server(service: Server) -> None:
    """A connection that never sends a byte is closed after the header timeout too."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        started = time.monotonic()
        read_until_closed(sock, HEADER_TIMEOUT_S + 4)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 3, "the connection was held"
    still_serving(service)
