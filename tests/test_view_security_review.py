"""`perfkit view` reviewed as an attacker would use it: clients that hold
connections open, Host headers, addresses that are loopback in disguise.
Each test was written against a problem found in that review."""

from __future__ import annotations

import http.client

from view_support import ViewServer, write_cprofile


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
