"""Ports the parent chooses for its children stay out of the kernel's ephemeral range, where any
outgoing connection could take them before the child binds."""

from __future__ import annotations

import socket

from orchestra_nb.runtime.ports import free_port, port_range


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = port_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200  # one process never hands out the same port twice in a row
    assert all(low <= p < high for p in ports), (low, high, sorted(ports)[:5], sorted(ports)[-5:])
    for port in ports[:20]:
        with socket.socket() as sock:  # as a gRPC or HTTP server binds it (TIME_WAIT does not count)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
