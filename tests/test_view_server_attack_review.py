"""`perfkit view`'s server (hyper) reviewed as an attacker and as a browser
user would use it: many idle or half-sent connections beside the page, and
requests whose clients left before their answer was computed."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import time
from pathlib import Path

import pytest
from view_support import ViewServer, write_cprofile, write_synthetic_tree


def get(port: int, path: str, timeout: float = 60) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, time.monotonic() - t0


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    src = write_cprofile(tmp_path_factory.mktemp("attack") / "c.prof")
    with ViewServer(src) as s:
        yield s


@pytest.mark.parametrize("sent", [b"", b"GET /api/meta HTTP/1.1\r\nHost: 127.0"])
def test_idle_or_half_sent_connections_past_the_cap_do_not_hold_up_the_page(server, sent):
    # 256 connections are served at once; past them a new one waited in the
    # backlog until an idle one was closed by the 10 s header timeout: with
    # 300 idle sockets open (or 300 that sent half a request head), the
    # page's next request hung for 8 to 10 s. A connection that is waiting
    # for a request now makes room for a new one, its longest waiting first,
    # as a server without a cap (snakeviz's tornado) answers at once; a
    # client's idle keep-alive connection only when no other is waiting.
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < open_files() + 400:
        pytest.skip("needs 400 more open files")
    # The page's keep-alive connection, answered before, is not among those closed.
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    kept.request("GET", "/api/meta")
    assert kept.getresponse().read()
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if sent:
                s.sendall(sent)
            idle.append(s)
        time.sleep(0.3)
        for path in ("/api/meta", "/", "/api/funcs"):
            status, body, took = get(server.port, path)
            assert status == 200 and body, path
            assert took < 2, f"{path} waited {took:.1f} s behind 300 idle connections"
        kept.request("GET", "/api/funcs")
        assert kept.getresponse().status == 200
        # Those closed to make room were the oldest: the first ones opened.
        first = idle[0]
        first.settimeout(5)
        try:
            assert first.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        for s in idle:
            s.close()
        kept.close()
    assert server.get_json("api/meta")["views"]


def test_a_connection_being_answered_is_not_closed_to_make_room(server):
    # Making room closes only connections waiting for a request: one whose
    # answer is still being read is kept, and gets all of it.
    reader = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode())
    first = reader.recv(100)  # (the rest of the page waits in the server's send buffer)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.3)
        got = first
        while chunk := reader.recv(65536):
            got += chunk
    finally:
        for s in idle:
            s.close()
        reader.close()
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(
        next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"Content-Length")
    )
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length > 10_000


def test_answers_for_clients_that_left_are_not_computed(tmp_path: Path):
    # A request's answer was computed even when its client had closed the
    # connection before it was started (a page reloaded or closed while its
    # slices were being computed): 24 such requests of a large profile kept
    # the 4 workers busy and the next page's requests waited for all of
    # them. Those not started when their client leaves are now dropped.
    src = tmp_path / "big.prof"
    write_synthetic_tree(src, 1_000_000)
    with ViewServer(src) as s:
        status, _, one = get(s.port, "/api/slice?root=0&depth=1000&min=0")
        assert status == 200
        n = 24
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(
                f"GET /api/slice?root=0&depth=1000&min=0.0000001{i:02d} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{s.port}\r\n\r\n".encode()
            )
            c.close()
        time.sleep(0.2)
        status, _, took = get(s.port, "/api/meta")
        assert status == 200
        # (Computing them all takes about n * one / 2 on two cores.)
        assert took < max(1.0, n * one / 6), f"waited {took:.1f} s; one slice takes {one:.2f} s"
