"""--ray-address is checked with a plain TCP connection before Ray is started (ray.init would retry
an address nothing answers at for minutes): host:port, IPv4, a name or a bracketed IPv6 address."""

from __future__ import annotations

import socket

import pytest

from mergesmith.errors import ClusterError
from mergesmith.execute.ray_cluster import check_reachable


@pytest.mark.parametrize(
    "family, host, written", [(socket.AF_INET, "127.0.0.1", "127.0.0.1"), (socket.AF_INET6, "::1", "[::1]")]
)
def test_an_address_where_something_listens_is_accepted(family, host, written):
    try:
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")
    with server:
        server.listen(1)
        check_reachable(f"{written}:{server.getsockname()[1]}")


def test_a_port_nothing_listens_on_is_refused_naming_it():
    with socket.socket() as probe:  # a port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClusterError) as raised:
        check_reachable(f"127.0.0.1:{port}")
    assert raised.value.message.startswith(f"--ray-address 127.0.0.1:{port}: nothing answers there")
