"""Hostile clients for the hub: each connects from a lab namespace and misbehaves on purpose.

Theory of operation
-------------------
Every client is an ordinary blocking socket made inside a namespace with
`labnet.socket_in`, so it reaches the hub over the lab's underlay exactly as a spoke does.
They come in three depths:

- plain TCP (`tcp_connect`): garbage, plaintext HTTP, silence, half a ClientHello;
- TLS (`tls_client`): with or without a certificate, from our CA or another one;
- the wire protocol (`WireClient`): a *valid* spoke certificate and a proper HELLO, after
  which it sends whatever it is told: raw bytes, records with any type and length
  header, frames with any payload. It reads the hub only when asked (`receive`,
  `wait_for`), so not asking is how it stops reading; `rcvbuf` shrinks its window first.

`send_below_tls` writes to the TCP socket under a TLS layer, and `wait_closed` reads
below TLS too, so "the hub closed it" means the TCP connection ended (EOF or reset),
whatever the TLS layer would have made of it. Each function returns its socket still
open: the test decides when the hub should have closed it.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import labnet
from l2vpn import wire

ROGUE = "rogue"
SERVER_NAME = "hub"
_HEADER = struct.Struct(">I")


def hub_address(lab) -> tuple[str, int]:
    return lab.nodes["hub"].underlay_ip, lab.port


def tcp_connect(lab, ns: str, timeout_s: float = 5.0, rcvbuf: int | None = None
                ) -> socket.socket:
    """A TCP connection from ns to the hub's TLS port (rcvbuf is set before connecting)."""
    s = labnet.socket_in(ns)
    try:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout_s)
        s.connect(hub_address(lab))
    except BaseException:
        s.close()
        raise
    return s


@functools.lru_cache(maxsize=None)
def client_context(cert: str | None = None, key: str | None = None,
                   ca: str | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context: shows cert/key if given, checks the hub against ca if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca:
        ctx.load_verify_locations(ca)        # the hub's certificate names DNS "hub"
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_client(lab, ns: str, cert=None, key=None, ca=None, *, timeout_s: float = 5.0,
               rcvbuf: int | None = None) -> ssl.SSLSocket:
    """A TLS socket to the hub whose handshake is done on our side.

    In TLS 1.3 the client finishes before the hub has judged its certificate, so this
    returns even when the hub is about to refuse it."""
    ctx = client_context(*(str(p) if p else None for p in (cert, key, ca)))
    raw = tcp_connect(lab, ns, timeout_s, rcvbuf)
    try:
        return ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
    except BaseException:
        raw.close()
        raise


def rogue_credentials(lab, name: str = ROGUE) -> tuple[Path, Path, Path]:
    """(cert, key, ca) of a spoke the lab's PKI issued but whose daemon is not running."""
    d = lab.pki_dir
    return d / f"{name}.crt", d / f"{name}.key", d / "ca.crt"


def send_below_tls(sock: socket.socket, data: bytes) -> None:
    """Write bytes on the TCP socket itself, under any TLS layer wrapped around it."""
    socket.socket.sendall(sock, data)


def wait_closed(socks, timeout_s: float) -> list:
    """Read below TLS until every socket sees EOF or a reset; returns those still open."""
    open_ = {s.fileno(): s for s in socks if s.fileno() >= 0}
    deadline = time.monotonic() + timeout_s
    while open_:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(open_), [], [], min(left, 0.5))
        for fd in ready:
            try:
                data = socket.socket.recv(open_[fd], 65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:            # reset: closed with our bytes unread, still closed
                data = b""
            if not data:
                del open_[fd]
    return list(open_.values())


# ----------------------------------------------------------- one connection per kind


def garbage_before_tls(lab, ns: str) -> socket.socket:
    """Bytes that are no TLS record (first byte 0: no such content type)."""
    s = tcp_connect(lab, ns)
    s.sendall(b"\x00GARBAGE" + os.urandom(2048))
    return s


def garbage_after_handshake(lab, ns: str) -> socket.socket:
    """A valid certificate, a finished handshake (the hub's first record read), then raw
    bytes on the TCP socket where TLS records belong."""
    cert, key, ca = rogue_credentials(lab)
    s = tls_client(lab, ns, cert, key, ca)
    try:
        if not s.recv(1):             # the hub speaks only once its handshake is done
            return s
        send_below_tls(s, b"\x00GARBAGE" + os.urandom(512))
    except (ssl.SSLError, OSError):
        pass
    return s


def plaintext_http(lab, ns: str) -> socket.socket:
    s = tcp_connect(lab, ns)
    s.sendall(b"GET / HTTP/1.1\r\nHost: hub\r\nUser-Agent: rogue\r\n\r\n")
    return s


def tls_without_certificate(lab, ns: str) -> socket.socket:
    """TLS that trusts our CA but shows no client certificate."""
    return _tls_then_wait(lab, ns, None, None)


def foreign_certificate(lab, ns: str, name: str = ROGUE) -> socket.socket:
    """TLS with a certificate for `name` issued by another CA (lab.foreign_pki)."""
    d = lab.workdir / "foreign-pki"
    if not (d / f"{name}.crt").exists():
        d = lab.foreign_pki(name)
    return _tls_then_wait(lab, ns, d / f"{name}.crt", d / f"{name}.key")


def _tls_then_wait(lab, ns, cert, key) -> socket.socket:
    raw = tcp_connect(lab, ns)
    ctx = client_context(*(str(p) if p else None for p in (cert, key, lab.pki_dir / "ca.crt")))
    try:
        return ctx.wrap_socket(raw, server_hostname=SERVER_NAME)
    except (ssl.SSLError, OSError):
        return raw          # refused already: still a socket the hub must have closed


HOSTILE = {
    "garbage-before-tls": garbage_before_tls,
    "garbage-after-handshake": garbage_after_handshake,
    "plaintext-http": plaintext_http,
    "tls-no-certificate": tls_without_certificate,
    "foreign-ca": foreign_certificate,
}


def partial_client_hello() -> bytes:
    """The first half of a real TLS 1.3 ClientHello (its record header promises more)."""
    ctx = client_context()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=SERVER_NAME)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    return hello[:len(hello) // 2]


def half_open(lab, ns: str, n: int, partial_every: int = 2) -> list[socket.socket]:
    """n TCP connections left open: silent, or (every partial_every-th) half a ClientHello."""
    chunk = partial_client_hello()
    socks = []
    try:
        for i in range(n):
            s = tcp_connect(lab, ns)
            socks.append(s)
            if partial_every and i % partial_every == 1:
                s.sendall(chunk)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# ---------------------------------------------------------------- the wire protocol


def ethernet(dst: str | bytes, src: str | bytes, payload: bytes,
             ethertype: int = 0x88B5) -> bytes:
    """An Ethernet frame (no padding added); 0x88B5 is the local experimental type."""
    def mac(m):
        return bytes.fromhex(m.replace(":", "")) if isinstance(m, str) else bytes(m)
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


class WireClient:
    """A spoke with a valid certificate and a proper HELLO that then does as it is told.

    The node name is the certificate's CN (`name`). The constructor returns once the hub's
    HELLO arrived. It reads only in `receive`/`wait_for`; every send and read takes one
    lock, so `start_keepalives` may run beside the test's own sends.
    """

    def __init__(self, lab, ns: str, name: str = ROGUE, *, rcvbuf: int | None = None,
                 mtu: int = 1500, caps: int = 0, timeout_s: float = 5.0):
        cert, key, ca = rogue_credentials(lab, name)
        self.name = name
        self.conn = wire.Connection(name, mtu, caps)
        self.events: list = []
        self._lock = threading.Lock()
        self._ka_stop = threading.Event()
        self._ka_thread: threading.Thread | None = None
        self.sock = tls_client(lab, ns, cert, key, ca, timeout_s=timeout_s, rcvbuf=rcvbuf)
        try:
            self.send_bytes(self.conn.hello())
            self.hub_hello = self.wait_for(wire.Hello, timeout_s)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def local(self) -> str:
        """Our ip:port, as the hub reports it in a session's `remote`."""
        host, port = socket.socket.getsockname(self.sock)
        return f"{host}:{port}"

    # -- sending ----------------------------------------------------------------------
    def send_bytes(self, data: bytes) -> None:
        """Raw bytes inside the TLS stream (they need not form records)."""
        with self._lock:
            self.sock.sendall(data)

    def send_below_tls(self, data: bytes) -> None:
        with self._lock:
            send_below_tls(self.sock, data)

    def send_record(self, rtype: int, payload: bytes = b"", length: int | None = None) -> None:
        """A record header with any type and length (default: the payload's), then payload."""
        n = len(payload) if length is None else length
        self.send_bytes(_HEADER.pack((rtype & 0xFF) << 24 | (n & 0xFFFFFF)) + payload)

    def send_frame(self, data: bytes) -> None:
        """A FRAME record with any payload, unchecked."""
        self.send_record(wire.FRAME, data)

    def send_keepalive(self) -> None:
        self.send_record(wire.KEEPALIVE)

    def start_keepalives(self, interval_s: float = 0.5) -> None:
        """Send KEEPALIVE every interval_s from a thread (alive, whether or not reading)."""
        def run():
            while not self._ka_stop.wait(interval_s):
                try:
                    self.send_keepalive()
                except OSError:
                    return
        self._ka_thread = threading.Thread(target=run, daemon=True, name="rogue-keepalive")
        self._ka_thread.start()

    def stop_keepalives(self) -> None:
        self._ka_stop.set()
        if self._ka_thread is not None:
            self._ka_thread.join(5)

    # -- reading ----------------------------------------------------------------------
    def receive(self, timeout_s: float = 1.0) -> list:
        """One read of what the hub sent (waiting up to timeout_s), decoded; EOF, a reset
        or a TLS alert reads as the end of the stream."""
        with self._lock:
            self.sock.settimeout(timeout_s)
            try:
                data = self.sock.recv(1 << 16)
            except (TimeoutError, socket.timeout):
                return []
            except (ssl.SSLError, OSError):
                data = b""
            finally:
                self.sock.settimeout(None)
        self.conn.receive_data(data)
        new = self.conn.events()
        self.events += new
        return new

    def wait_for(self, kinds, timeout_s: float = 5.0):
        """The first event of the given type(s) not seen before; TimeoutError otherwise."""
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        start = len(self.events)
        deadline = time.monotonic() + timeout_s
        while True:
            for ev in self.events[start:]:
                if isinstance(ev, kinds):
                    return ev
            start = len(self.events)
            if self.events and isinstance(self.events[-1], wire.ConnectionClosed):
                raise ConnectionError(f"stream ended without {kinds}: {self.events}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kinds} from the hub within {timeout_s}s")
            self.receive(left)

    def close(self) -> None:
        self.stop_keepalives()
        self.sock.close()
