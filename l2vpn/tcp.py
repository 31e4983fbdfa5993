"""Plain TCP for the sessions: listening, connecting, and the socket options the data path
needs; each failure a user can cause becomes one TransportError line."""

import errno
import os
import socket

from l2vpn.errors import TransportError


def listen(address: str, port: int, backlog: int = 512, purpose: str = "listen on",
           port_key: str = "listen.port", address_key: str = "listen.address"
           ) -> socket.socket:
    """A non-blocking TCP listener; a port in use becomes one clear TransportError naming
    the config key to change."""
    where = format_addr((address, port))
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TransportError(
                f"cannot {purpose} {where}: port already in use; stop the other "
                f"program or set {port_key}") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise TransportError(
                f"cannot {purpose} {where}: no interface has that address; "
                f"fix {address_key}") from None
        raise TransportError(f"cannot {purpose} {where}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY is mandatory: without it batching meets Nagle and stalls 40 ms."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return      # a socket pair standing in for TCP (tests/fakes.FakeNetwork)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def format_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect(host: str, port: int):
    """Start a non-blocking TCP connect; returns (socket, "ip:port")."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TransportError(f"cannot resolve hub address {host!r}: {e.strerror}") from None
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    sock.setblocking(False)
    err = sock.connect_ex(addr)
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise TransportError(f"cannot connect to {format_addr(addr)}: {os.strerror(err)}")
    return sock, format_addr(addr)
