"""`perfkit view`'s HTTP server against clients that send too much or too
little: a request head that never ends, two Host headers, HEAD requests.
Each was a gap of the server before it moved to hyper."""

from __future__ import annotations

import http.client
import socket
import time
from pathlib import Path

import pytest
from view_support import ViewServer, write_cprofile


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    src = write_cprofile(tmp_path_factory.mktemp("hyper") / "c.prof")
    with ViewServer(src) as s:
        yield s


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def read_head(sock: socket.socket) -> bytes:
    """What the server answered up to the end of its head (or until it closed)."""
    got = b""
    while b"\r\n\r\n" not in got:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        got += chunk
    return got


def test_a_request_line_that_never_ends_is_cut_off_not_kept(server):
    # The server read a request's header line with no size cap: a client
    # sending 300 MB without a newline grew the viewer's memory by as much,
    # for as long as it stayed connected. Now the head is capped (64 KiB):
    # the connection is answered 431 and closed long before 50 MB are sent.
    before = rss_kb(server.proc.pid)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /")
    chunk = b"a" * (1 << 20)
    sent, cut = 0, False
    try:
        while sent < 50 << 20:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # (reset, broken pipe, or a send that no longer moves)
        cut = True
    grown = rss_kb(server.proc.pid) - before
    head = read_head(sock) if not cut else b""
    sock.close()
    assert cut or head.startswith(b"HTTP/1.1 431"), (sent, head[:100])
    # (The kernel's socket buffers hold some megabytes; the server holds 64 KiB.)
    assert sent < 32 << 20, f"the server took {sent >> 20} MB of one header line"
    assert grown < 8 << 10, f"the viewer grew by {grown} kB"
    assert server.get_json("api/meta")["views"]  # still serving


def raw_request(port: int, lines: list[str]) -> tuple[int, dict, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.close()
    head, _, body = got.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status_line.split()[1]), headers, body


def test_a_second_host_header_cannot_name_another_site(server):
    # Only the first Host header was checked: a request that named the
    # viewer first and another site second was answered with the profile.
    p = server.port
    for hosts in ([f"127.0.0.1:{p}", f"evil.example:{p}"], [f"evil.example:{p}", f"127.0.0.1:{p}"]):
        status, headers, body = raw_request(
            p, ["GET /api/meta HTTP/1.1", *[f"Host: {h}" for h in hosts], "Connection: close"]
        )
        assert status in (400, 403), (hosts, status)
        assert b"files" not in body and headers["x-content-type-options"] == "nosniff"
    # Twice the same allowed name is still two Host headers (RFC 9112: 400).
    status, _, _ = raw_request(
        p, ["GET /api/meta HTTP/1.1", f"Host: 127.0.0.1:{p}", f"Host: 127.0.0.1:{p}", "Connection: close"]
    )
    assert status == 400
    status, _, body = raw_request(p, ["GET /api/meta HTTP/1.1", f"Host: 127.0.0.1:{p}", "Connection: close"])
    assert status == 200 and b"files" in body


def test_head_gets_the_head_of_get_without_its_body(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/api/funcs")
    get = conn.getresponse()
    body = get.read()
    conn.request("HEAD", "/api/funcs")  # (the same keep-alive connection)
    head = conn.getresponse()
    assert head.read() == b""
    conn.request("GET", "/api/meta")  # nothing left over on the connection
    assert conn.getresponse().status == 200
    conn.close()
    assert head.status == get.status == 200
    assert int(head.getheader("Content-Length")) == len(body) > 0
    for name in (
        "Content-Type",
        "Cache-Control",
        "X-Content-Type-Options",
        "Referrer-Policy",
        "Content-Security-Policy",
    ):
        assert head.getheader(name) == get.getheader(name) is not None, name


def test_refusals_carry_the_security_headers(server):
    p = server.port
    for lines, status in (
        (["GET /api/meta HTTP/1.1", f"Host: evil.example:{p}"], 403),
        (["POST /api/meta HTTP/1.1", f"Host: 127.0.0.1:{p}", "Content-Length: 0"], 405),
        (["GET /nothing-here HTTP/1.1", f"Host: 127.0.0.1:{p}"], 404),
    ):
        got, headers, _ = raw_request(p, [*lines, "Connection: close"])
        assert got == status, lines
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert (headers.get("allow") == "GET, HEAD") == (status == 405)


def test_stalled_large_answers_and_idle_clients_do_not_delay_ctrl_c(tmp_path):
    # Clients that connect and send nothing, and one that asks for the page
    # and reads none of it: Ctrl-C stops the viewer within a second or two.
    src = write_cprofile(tmp_path / "c.prof")
    s = ViewServer(src)
    clients = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", s.port), timeout=5))
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", s.port))
        c.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
        clients.append(c)
        time.sleep(0.5)
        assert s.get_json("api/meta")["views"]
        t0 = time.monotonic()
        code, err = s.stop()
        assert time.monotonic() - t0 < 4, "Ctrl-C waited on the clients"
        assert code == 130 and "panicked" not in err, err
    finally:
        for c in clients:
            c.close()
        s.stop()
