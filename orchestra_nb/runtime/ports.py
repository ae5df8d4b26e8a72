"""Free ports, chosen by the parent so that every process can start at the same time.

The port the kernel hands out for `bind(('', 0))` comes from its ephemeral range, the same range it
takes the local end of every outgoing connection from. Between the parent's probe and the child's own
bind, any client or gRPC channel on the machine can take that port, and the child fails with "Failed to
bind". So ports come from below the ephemeral range, where the kernel never puts an outgoing
connection, each checked by binding it. Each process walks that range in order from a random start:
two processes (two notebooks, two test workers) pick the same port only if one's walk catches up with
the other's, where independent random draws would meet far sooner. Only when no port is found does
the kernel choose.
"""

from __future__ import annotations

import random
import socket
import threading

from orchestra_nb.errors import ConfigError

__all__ = ["check_free", "free_port", "port_range"]

_LOWEST = 20000  # below this sit many well-known services
_ATTEMPTS = 64
_next: int | None = None  # this process's walk; its start comes from the OS, not a seedable generator
_lock = threading.Lock()


def port_range() -> tuple[int, int]:
    """The ports drawn from: [lowest, start of the ephemeral range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        start = 32768  # Linux's default; macOS and Windows start higher still
    return _LOWEST, start


def _bindable(host: str, port: int) -> bool:
    host = "" if host in ("0.0.0.0", "") else host  # every interface
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as gRPC and uvicorn bind: a port whose last connections wait in TIME_WAIT is free to listen on
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    global _next
    low, high = port_range()
    with _lock:
        if high - low >= 1000:
            if _next is None:
                _next = random.SystemRandom().randrange(low, high)
            for _ in range(_ATTEMPTS):
                port = low + (_next - low) % (high - low)
                _next = port + 1
                if _bindable(host, port):
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("" if host == "0.0.0.0" else host, 0))
            return int(sock.getsockname()[1])


def check_free(host: str, port: int, what: str) -> None:
    """Raise a ConfigError naming `what` when `port`, given by the user, cannot be listened on."""
    if not _bindable(host, port):
        raise ConfigError(f"{what} cannot listen on {host}:{port}: the port is in use (another Flow, a "
                          f"previous run of this cell, or another program) or {host!r} is not an address of "
                          f"this machine. Choose another port, or leave the port out and a free one is "
                          f"chosen; `%orchestra ls` lists what this kernel still runs.")
