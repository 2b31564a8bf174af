"""`perfkit view` reviewed as an attacker would use it: clients that hold
connections open, Host headers, addresses that are loopback in disguise.
Each test was written against a problem found in that review."""

from __future__ import annotations

import http.client
import pstats
import socket
import time

import view_support
from conftest import perfkit_command
from view_support import ViewServer, write_cprofile


def test_idle_connections_past_the_file_limit_do_not_end_the_viewer(tmp_path, monkeypatch):
    # Each connection costs the server two file descriptors and its accept
    # thread ended at the first failed accept (EMFILE): with the usual limit
    # of 1024, about 510 clients that connected and sent nothing stopped the
    # viewer for good. Every later connection was refused, even once they
    # had gone, while `perfkit view` ran on and said nothing.
    src = write_cprofile(tmp_path / "c.prof")
    limited = ["sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', *perfkit_command()]
    monkeypatch.setattr(view_support, "perfkit_command", lambda: limited)
    with ViewServer(src) as server:
        # A page's keep-alive connection, opened before, is answered after too.
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        assert get_status(kept, "/api/meta") == 200
        idle = []
        try:
            for _ in range(80):  # past the server's 64 descriptors
                try:
                    idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
                except OSError:
                    break
            time.sleep(1)  # the server has tried to accept them all
        finally:
            for c in idle:
                c.close()
        answer, last_error = None, None
        deadline = time.monotonic() + 20
        while answer is None and time.monotonic() < deadline:
            try:
                answer = server.get_json("api/stats?view=0")
            except OSError as e:
                last_error = e
                time.sleep(0.2)
        assert answer is not None, f"the viewer no longer answers: {last_error}"
        assert len(answer["rows"]["f"]) == len(pstats.Stats(str(src)).stats)
        assert get_status(kept, "/api/funcs") == 200
        kept.close()


def get_status(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def test_a_loopback_address_written_as_ipv4_mapped_keeps_the_host_check(tmp_path):
    # `--host ::ffff:127.0.0.1` listens on 127.0.0.1 only (an IPv4-mapped
    # IPv6 address), but was not taken for loopback: the DNS-rebinding check
    # was off (a request naming evil.com got the profile) and the viewer
    # warned that anyone who can reach the address could read it.
    src = write_cprofile(tmp_path / "c.prof")
    server = ViewServer(src, extra=("--host", "::ffff:127.0.0.1"))
    with server:
        mine = raw_status(server.port, f"[::ffff:127.0.0.1]:{server.port}")
        other = raw_status(server.port, f"evil.com:{server.port}")
    assert (mine, other) == (200, 403)
    assert "warning" not in server.stderr, server.stderr


def raw_status(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", "/api/meta", skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status
