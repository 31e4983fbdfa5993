"""TLS 1.3 sessions over TCP, non-blocking, carrying wire records.

Theory of operation. A `Session` owns one socket and is driven by the event loop: first
the TCP connect (spokes), then the TLS handshake under a deadline, then the hello
exchange, then records. Reading drains everything OpenSSL holds (epoll cannot see data
already decrypted into OpenSSL's buffer), up to a budget so one busy peer cannot starve
the others. Writing appends records to one output buffer; the loop flushes it once per
pass as a few large TLS writes. After SSLWantWrite/ReadError the very same bytes are
offered again, as OpenSSL demands.

Backpressure: a session whose output buffer passes HIGH_WATER_B is `congested`; the
owner stops reading whichever source feeds it (`pause()` on that source plus
`add_waiter`) until it drains below LOW_WATER_B. Past HARD_CAP_B frames are dropped and
counted, so memory stays bounded whatever a peer does.

The session never decides where frames go: it hands each one to `on_frame(session,
data)` and reports its end through `on_close(session, reason)`.
"""

import errno
import logging
import os
import selectors
import socket
import ssl

from l2vpn import wire
from l2vpn.errors import ProtocolError, TransportError
from l2vpn.loop import READ, WRITE

log = logging.getLogger("l2vpn.transport")

HANDSHAKE_TIMEOUT_S = 10.0
READ_CHUNK_B = 256 * 1024
READ_BUDGET_B = 1024 * 1024
WRITE_CHUNK_B = 256 * 1024
HIGH_WATER_B = 1024 * 1024
LOW_WATER_B = 256 * 1024
HARD_CAP_B = 8 * 1024 * 1024

# One receive buffer for every session: a process runs one loop in one thread, and each
# read is copied into its session's decoder before the next read starts.
_READ_BUF = bytearray(READ_CHUNK_B)
_READ_VIEW = memoryview(_READ_BUF)

CONNECTING = "connecting"
HANDSHAKE = "handshake"
HELLO = "hello"
UP = "up"
CLOSED = "closed"


def listen(address: str, port: int) -> socket.socket:
    """A non-blocking TCP listener; a port in use becomes one clear TransportError."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(512)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise TransportError(
                f"cannot listen on {address}:{port}: port already in use; stop the other "
                f"program or set listen.port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise TransportError(
                f"cannot listen on {address}:{port}: no interface has that address; "
                f"fix listen.address") from None
        raise TransportError(f"cannot listen on {address}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY is mandatory: without it batching meets Nagle and stalls 40 ms."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def format_addr(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssl_reason(e: BaseException) -> str:
    """A short human reason for a TLS failure."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        reason = e.reason or str(e)
        return reason.replace("_", " ").lower()
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


class Session:
    """One TLS session with a peer; a switch port once the hellos are exchanged."""

    def __init__(self, loop, sock, remote, *, context, server_side, node, mtu, caps=0,
                 server_hostname=None, on_secure=None, on_up=None, on_frame=None,
                 on_close=None):
        self.loop = loop
        self.remote = remote
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.conn = wire.Connection(node, mtu, caps)
        self.on_secure = on_secure
        self.on_up = on_up
        self.on_frame = on_frame
        self.on_close = on_close
        self.name = None
        self.cn = None
        self.peer = None
        self.state = CONNECTING
        self.close_reason = None
        self.created = loop.clock()
        self.up_since = None
        self.last_rx = self.last_tx = self.created
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.drops = 0
        self.out = bytearray()
        self._off = 0
        self._retry = 0
        self._paused = False
        self._closing = False
        self._want_write = False
        self.waiters = set()
        self.sock = sock
        self._deadline = loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)
        if server_side:
            self._start_tls()
        else:
            loop.watch(sock, WRITE, self._on_connect)

    def __repr__(self):
        return f"<Session {self.name or self.remote} {self.state}>"

    # -- connect and handshake -------------------------------------------------------
    def _on_connect(self, _mask):
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.close(f"cannot connect to {self.remote}: {os.strerror(err)}")
            return
        self._start_tls()

    def _start_tls(self):
        tune(self.sock)
        self.loop.forget(self.sock)
        try:
            self.sock = self.context.wrap_socket(
                self.sock, server_side=self.server_side, do_handshake_on_connect=False,
                server_hostname=None if self.server_side else self.server_hostname)
        except (ssl.SSLError, OSError) as e:
            self.close(f"TLS set-up failed: {ssl_reason(e)}")
            return
        self.state = HANDSHAKE
        self._handshake()

    def _handshake(self, _mask=None):
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.watch(self.sock, READ, self._handshake)
            return
        except ssl.SSLWantWriteError:
            self.loop.watch(self.sock, READ | WRITE, self._handshake)
            return
        except (ssl.SSLError, OSError, ValueError) as e:
            self.close(f"handshake refused: {ssl_reason(e)}")
            return
        if self.on_secure is not None:
            problem = self.on_secure(self)
            if problem:
                self.close(problem)
                return
        self.state = HELLO
        self.out += self.conn.hello()
        self.loop.watch(self.sock, READ, self._on_io)
        self.flush()

    def _handshake_timeout(self):
        if self.state in (CONNECTING, HANDSHAKE, HELLO):
            self.close(f"no {'connection' if self.state == CONNECTING else 'handshake'} "
                       f"within {HANDSHAKE_TIMEOUT_S:g} s")

    # -- reading ---------------------------------------------------------------------
    def _on_io(self, mask):
        if mask & WRITE:
            self.flush()
            if self.state == CLOSED:
                return
        if mask & READ and not self._paused:
            self._read()

    def _read(self, _mask=None):
        sock, conn, buf, view = self.sock, self.conn, _READ_BUF, _READ_VIEW
        got = 0
        eof = False
        while True:
            try:
                n = sock.recv_into(buf)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._set_want_write(True)
                break
            except ssl.SSLError as e:
                if self.state == HELLO and not self.server_side:
                    self.close(f"hub refused us: {ssl_reason(e)}")
                else:
                    self.close(f"TLS error: {ssl_reason(e)}")
                return
            except OSError as e:
                self.close(f"connection lost: {e.strerror or e}")
                return
            if n == 0:
                eof = True
                conn.receive_data(b"")
                break
            conn.receive_data(view[:n])
            got += n
            if got >= READ_BUDGET_B:
                if sock.pending():
                    self.loop.again(sock, self._read)
                break
        if got:
            self.last_rx = self.loop.clock()
        try:
            self._dispatch(conn.events())
        except ProtocolError as e:
            self.close(f"protocol violation: {e}", goodbye=str(e))
            return
        if eof and self.state != CLOSED:
            self.close("peer closed the connection")

    def _dispatch(self, events):
        on_frame = self.on_frame
        for ev in events:
            if self.state == CLOSED:
                return
            if type(ev) is wire.Frame:
                self.frames_in += 1
                self.bytes_in += len(ev.data)
                if self.state == UP:
                    on_frame(self, ev.data)
            elif type(ev) is wire.Hello:
                self.peer = ev
                self.name = ev.node
                if self.on_up is not None:
                    problem = self.on_up(self)
                    if problem:
                        self.close(problem, goodbye=problem)
                        return
                self.state = UP
                self.up_since = self.loop.clock()
                self._deadline.cancel()
            elif type(ev) is wire.Goodbye:
                self.close(f"peer said goodbye ({ev.reason or 'no reason'})")
            elif type(ev) is wire.ConnectionClosed:
                self.close("peer closed the connection")

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self):
        """Stop reading this peer until resume(): its frames have nowhere to go."""
        if not self._paused:
            self._paused = True
            self._update_interest()

    def resume(self):
        if self._paused:
            self._paused = False
            self.last_rx = self.loop.clock()
            if self.state != CLOSED:
                self._update_interest()
                self.loop.again(self.sock, self._read)

    # -- writing ---------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return len(self.out) - self._off

    @property
    def congested(self) -> bool:
        return len(self.out) - self._off > HIGH_WATER_B

    def send_frame(self, data) -> None:
        if self.state != UP or len(self.out) - self._off > HARD_CAP_B:
            self.drops += 1
            return
        self.conn.frame_into(self.out, data)
        self.frames_out += 1
        self.bytes_out += len(data)
        self.loop.want_flush(self, self.flush)

    def send_keepalive(self) -> None:
        if self.state == UP:
            self.out += self.conn.keepalive()
            self.loop.want_flush(self, self.flush)

    def flush(self) -> None:
        if self.state in (CONNECTING, HANDSHAKE, CLOSED):
            return
        out, sock = self.out, self.sock
        while self._off < len(out):
            size = self._retry or min(WRITE_CHUNK_B, len(out) - self._off)
            try:
                n = sock.send(out[self._off:self._off + size])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self._retry = size
                self._set_want_write(True)
                break
            except (ssl.SSLError, OSError) as e:
                if not self._closing:
                    self.close(f"connection lost while sending: {ssl_reason(e)}")
                return
            self._retry = 0
            self._off += n
            self.last_tx = self.loop.clock()
        else:
            out.clear()
            self._off = 0
            self._set_want_write(False)
        if self._off > HIGH_WATER_B and self._off > len(out) // 2:
            del out[:self._off]
            self._off = 0
        if self.waiters and len(out) - self._off < LOW_WATER_B:
            waiters, self.waiters = self.waiters, set()
            for w in waiters:
                w.resume()

    def add_waiter(self, source) -> None:
        """Resume `source` once this session's output has drained."""
        self.waiters.add(source)

    def _set_want_write(self, want: bool) -> None:
        if want != self._want_write:
            self._want_write = want
            self._update_interest()

    def _update_interest(self):
        if self.state in (HELLO, UP):
            mask = (0 if self._paused else READ) | (WRITE if self._want_write else 0)
            self.loop.watch(self.sock, mask, self._on_io)

    # -- ending ----------------------------------------------------------------------
    def goodbye(self, reason: str, linger_s: float = 1.0) -> None:
        """Say goodbye and close, waiting at most `linger_s` for the words to leave."""
        if self.state in (HELLO, UP):
            try:
                self.out += self.conn.goodbye(reason)
            except ProtocolError:
                pass
            self._drain_blocking(linger_s)
        self.close(f"goodbye: {reason}")

    def _drain_blocking(self, linger_s):
        deadline = self.loop.clock() + linger_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, READ | WRITE)
            while self.buffered and self.state != CLOSED:
                left = deadline - self.loop.clock()
                if left <= 0 or not sel.select(left):
                    return
                self.flush()

    def close(self, reason: str, goodbye: str | None = None) -> None:
        if self.state == CLOSED:
            return
        if goodbye and self.state in (HELLO, UP):
            self._closing = True  # a failing flush must not close (and report) a second time
            try:
                self.out += self.conn.goodbye(goodbye[:200])
                self.flush()
            except (ProtocolError, OSError):
                pass
        self.state = CLOSED
        self.close_reason = reason
        self._deadline.cancel()
        self.loop.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        self.out = bytearray()
        self._off = 0
        waiters, self.waiters = self.waiters, set()
        for w in waiters:
            w.resume()
        if self.on_close is not None:
            self.on_close(self, reason)

    # -- reporting -------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        return {
            "node": self.name,
            "cn": self.cn,
            "remote": self.remote,
            "state": self.state,
            "uptime_s": round(now - self.up_since, 3) if self.up_since else 0.0,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": self.drops,
            "buffered_b": self.buffered,
            "caps": self.conn.caps if self.peer else 0,
        }


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
