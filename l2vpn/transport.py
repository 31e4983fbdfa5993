"""TLS 1.3 sessions over TCP, non-blocking, carrying wire records.

Theory of operation. A `Session` owns one socket and is driven by the event loop: first
the TCP connect (spokes), then the TLS handshake under a deadline, then the hello
exchange, then records. TLS runs over memory BIOs (`SSLContext.wrap_bio`), not an
SSLSocket: one recv() takes up to 256 KiB of ciphertext and one send() gives the kernel
up to 256 KiB, where an SSLSocket makes two syscalls per 16 KiB TLS record and hands TCP
small writes. Reading takes what the kernel holds, up to a budget so one busy peer
cannot starve the others, and decrypts every whole record; a partial record waits in
the BIO. The budget is counted in frames (FRAME_BUDGET a read, as a TAP read is), not
bytes: each read sizes the next from the bytes per frame it saw, so a peer flooding
small frames gets as many frames a pass as one sending large ones, not 20 times more.
Writing appends records to a plaintext buffer; the loop flushes it once per
pass, encrypting a chunk only when the kernel has taken the previous one, so memory
stays bounded by the plaintext buffer plus one chunk of ciphertext.

Backpressure (port.FlowControl, with the `Thresholds` a session is given): a session
whose output buffer passes high water is `congested`; the owner stops reading whichever
source feeds it (`pause()` on that source plus `add_waiter`) until it drains below low
water. Past the hard cap frames are dropped and counted, so memory stays bounded
whatever a peer does. A session that keeps its waiters paused for `stall_s` is
`stalled`: it resumes them, and until it drains it is no longer waited for and drops
what passes high water, so a peer that stops reading cannot hold back the spokes that
send to it.

The session moves through lifecycle.py's table. `goodbye()` never blocks the loop: it
queues the goodbye and returns; the session closes itself once its output has left, or
when the linger runs out (CLOSING in between, reading nothing).

The session never decides where frames go: it hands each one to `on_frame(session,
data)` and reports its end through `on_close(session, reason)`. Frames cross that line in
vnet form (a virtio-net header first). When both hellos carry CAP_VNET_HDR they travel
whole as FRAME_VNET records, GSO super-frames included; otherwise the header is added on
receipt, and super-frames and partial checksums are finished in software before sending,
so an older or non-offloading peer gets ordinary MTU-sized frames.
"""

import itertools
import logging
import os
import socket
import ssl
from dataclasses import dataclass

from l2vpn import wire
from l2vpn.errors import ProtocolError
from l2vpn.lifecycle import (CLOSED, CLOSING, CONNECTED, CONNECTING, ENDED, GOODBYE_SAID,
                             GREETED, HANDSHAKE, HELLO, SECURED, UP, advance)
from l2vpn.logs import RateLimitedLog
from l2vpn.tcp import tune
from l2vpn.eventloop import READ, WRITE
from l2vpn.port import STALL_S, FlowControl
from l2vpn.offload import PLAIN_HDR, VNET_HDR_LEN, OffloadError, needs_work, to_plain

log = logging.getLogger("l2vpn.transport")

# Defaults of `Thresholds`; HIGH_WATER_B and KEEP_B also size SendBuffer's storage.
HANDSHAKE_TIMEOUT_S = 10.0
READ_CHUNK_B = 256 * 1024
READ_BUDGET_B = 1024 * 1024   # at most, a read
MIN_READ_B = 16 * 1024        # at least, a read
FRAME_BUDGET = 256            # frames a read aims at
WRITE_CHUNK_B = 256 * 1024
HIGH_WATER_B = 1024 * 1024
LOW_WATER_B = 256 * 1024
HARD_CAP_B = 8 * 1024 * 1024
KEEP_B = 2 * HIGH_WATER_B
SMALL_WRITE_B = 16 * 1024

# One receive buffer for every session: a process runs one loop in one thread, and each
# read is copied into its session's decoder before the next read starts.
_READ_BUF = bytearray(READ_CHUNK_B)
_READ_VIEW = memoryview(_READ_BUF)

# Session ids: one counter for the process, so an id is never reused while the node runs
# and a new id in `status` means a new session, however the clocks moved.
_session_ids = itertools.count(1)

# Why a session failed before it came up: a small fixed set, for counting (metrics).
NO_CERTIFICATE = "no_certificate"
UNTRUSTED = "untrusted"
REVOKED = "revoked"
EXPIRED = "expired"
NAME_MISMATCH = "name_mismatch"
TIMEOUT = "timeout"
PROTOCOL = "protocol"
NOT_LISTED = "not_listed"     # admit: listed, and the CN has no entry under ports
FAILURES = (NO_CERTIFICATE, UNTRUSTED, REVOKED, EXPIRED, NAME_MISMATCH, TIMEOUT, PROTOCOL,
            NOT_LISTED)

# OpenSSL verify codes (X509_V_ERR_*) and alert reasons that say more than "untrusted".
_VERIFY_FAILURE = {9: EXPIRED, 10: EXPIRED, 23: REVOKED, 62: NAME_MISMATCH}
_ALERT_FAILURE = {"SSLV3_ALERT_CERTIFICATE_EXPIRED": EXPIRED,
                  "SSLV3_ALERT_CERTIFICATE_REVOKED": REVOKED,
                  "TLSV1_ALERT_UNKNOWN_CA": UNTRUSTED,
                  "SSLV3_ALERT_BAD_CERTIFICATE": UNTRUSTED,
                  "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": UNTRUSTED,
                  "TLSV13_ALERT_CERTIFICATE_REQUIRED": NO_CERTIFICATE,
                  "PEER_DID_NOT_RETURN_A_CERTIFICATE": NO_CERTIFICATE,
                  "CERTIFICATE_VERIFY_FAILED": UNTRUSTED}


def tls_failure(e: BaseException) -> str:
    """Which of FAILURES a failed TLS handshake was."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return _VERIFY_FAILURE.get(e.verify_code, UNTRUSTED)
    if isinstance(e, ssl.SSLError):
        return _ALERT_FAILURE.get(e.reason or "", PROTOCOL)
    return PROTOCOL


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


def plain_frames(port, frame, label: str) -> list:
    """What a port without offloads sends for a vnet-form frame that needs work: its
    segments, checksummed; none (counted on the port, logged rate-limited) if it cannot
    be segmented, which only a broken or hostile peer's frame does. A port has
    `offload_errors`, `soft_offloads` and `port_log` (a RateLimitedLog)."""
    try:
        frames = to_plain(frame)
    except OffloadError as e:
        port.offload_errors += 1
        port.port_log.warning("offload", "%s: dropped a frame that cannot be segmented: %s",
                          label, e)
        return []
    port.soft_offloads += 1
    return frames


@dataclass(frozen=True)
class Thresholds:
    """Where a session's back-pressure and deadlines bite (bytes queued, seconds)."""

    high_water_b: int = HIGH_WATER_B     # past it, `congested`: its sources wait
    low_water_b: int = LOW_WATER_B       # below it, drained: they go on
    hard_cap_b: int = HARD_CAP_B         # past it, frames are dropped
    stall_s: float = STALL_S             # waited on this long, `stalled`
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S   # connect, TLS and hello, all told

    def __post_init__(self):
        if not 0 <= self.low_water_b < self.high_water_b <= self.hard_cap_b:
            raise ValueError(f"need low_water_b < high_water_b <= hard_cap_b: {self}")


DEFAULTS = Thresholds()


class SendBuffer:
    """Bytes queued for one TLS socket, sent from `start`, appended at `end`.

    The storage is reused across flushes instead of being emptied: an emptied bytearray
    gives its memory back, and the next 64 KiB frame then pays for fresh pages (17% of
    the hub's time when measured). Capacity above KEEP_B is released once drained.
    """

    __slots__ = ("data", "start", "end")

    def __init__(self):
        self.data = bytearray()
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def put2(self, head, body) -> None:
        """put(head) then put(body): a record header and its payload, in one call."""
        data, end = self.data, self.end
        mid = end + len(head)
        new = mid + len(body)
        if new <= len(data):
            data[end:mid] = head
            data[mid:new] = body
        else:
            if end < len(data):
                del data[end:]
            data += head
            data += body
        self.end = new

    def put(self, part) -> None:
        data, end = self.data, self.end
        new = end + len(part)
        if new <= len(data):
            data[end:new] = part
        else:
            if end < len(data):
                del data[end:]
            data += part
        self.end = new

    def consume(self, n: int) -> None:
        """Forget the first n queued bytes (they were sent)."""
        self.start += n
        if self.start == self.end:
            self.start = self.end = 0
            if len(self.data) > KEEP_B:
                self.data = bytearray()
        elif self.start > HIGH_WATER_B and self.start > self.end - self.start:
            del self.data[:self.start]
            self.end -= self.start
            self.start = 0

    def clear(self) -> None:
        self.data = bytearray()
        self.start = self.end = 0


class Session(FlowControl):
    """One TLS session with a peer; a switch port (port.Port) once the hellos are
    exchanged."""

    def __init__(self, loop, sock, remote, *, context, server_side, node, mtu, caps=0,
                 server_hostname=None, on_secure=None, on_up=None, on_frame=None,
                 on_close=None, on_limits=None, thresholds=DEFAULTS):
        super().__init__(loop, RateLimitedLog(log), thresholds.stall_s)
        self.thresholds = thresholds
        # copied out of `thresholds`: read for every frame
        self._high_water_b = thresholds.high_water_b
        self._low_water_b = thresholds.low_water_b
        self._hard_cap_b = thresholds.hard_cap_b
        self.id = next(_session_ids)
        self.remote = remote
        self.context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.conn = wire.Connection(node, mtu, caps)
        self.on_secure = on_secure
        self.on_up = on_up
        self.on_frame = on_frame
        self.on_close = on_close
        self.on_limits = on_limits   # (session, wire.Limits): the peer's flood limits
        self.name = None
        self.cn = None
        self.peer = None
        self.state = CONNECTING
        self.close_reason = None
        self.failure = None      # one of FAILURES, set where a handshake or hello fails
        self.created = loop.clock()
        self.up_since = None
        self.last_rx = self.last_tx = self.created
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.drops = self.soft_offloads = self.offload_errors = 0
        self.vnet = False
        self.flood_limits = False   # both hellos carry CAP_FLOOD_LIMITS
        self.out = SendBuffer()
        self._want_write = False
        self.sock = sock
        self.tls = None          # ssl.SSLObject once the TCP connection is up
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._cipher = b""       # ciphertext the kernel has not taken yet
        self._eof = False
        self._read_budget = READ_BUDGET_B
        # what the state waits for: the handshake and hello, then (CLOSING) the linger
        self._deadline = loop.call_later(thresholds.handshake_timeout_s,
                                         self._handshake_timeout)
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
        try:
            tune(self.sock)
            self.tls = self.context.wrap_bio(
                self._in, self._out, server_side=self.server_side,
                server_hostname=None if self.server_side else self.server_hostname)
        except (ssl.SSLError, OSError) as e:
            self.close(f"TLS set-up failed: {ssl_reason(e)}")
            return
        self.state = advance(self.state, CONNECTED)
        self._handshake()

    def _handshake(self, mask=READ):
        if mask & READ and self._recv() is None:
            return
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            if self._eof:
                self.close("handshake refused: the peer closed the connection")
            elif self._send_cipher() is not None:
                self.loop.watch(self.sock, READ | (WRITE if self._cipher else 0),
                                self._handshake)
            return
        except (ssl.SSLError, ValueError) as e:
            self._send_cipher()   # the alert tells the peer why, where it can
            self.failure = tls_failure(e)
            self.close(f"handshake refused: {ssl_reason(e)}")
            return
        if self._send_cipher() is None:
            return
        if self.on_secure is not None:
            problem = self.on_secure(self)
            if problem:
                self.close(problem)
                return
        self.state = advance(self.state, SECURED)
        self.out.put(self.conn.hello())
        self.loop.watch(self.sock, READ, self._read)
        self.loop.again(self.sock, self._read)   # records that came with the handshake
        self.flush()

    def _handshake_timeout(self):
        if self.state in (CONNECTING, HANDSHAKE, HELLO):
            self.failure = TIMEOUT
            self.close(f"no {'connection' if self.state == CONNECTING else 'handshake'} "
                       f"within {self.thresholds.handshake_timeout_s:g} s")

    # -- reading ---------------------------------------------------------------------
    def _on_io(self, mask):
        if mask & WRITE:
            self.flush()
            if self.state == CLOSED:
                return
        if mask & READ and not self.paused:
            self._read()

    def _recv(self):
        """Move what the kernel holds (within the budget) into the TLS BIO; returns the
        bytes moved, or None if the session closed. EOF sets `_eof`."""
        sock, buf, view, bio = self.sock, _READ_BUF, _READ_VIEW, self._in
        got, budget = 0, self._read_budget
        while got < budget and not self._eof:
            want = min(READ_CHUNK_B, budget - got)
            try:
                n = sock.recv_into(buf, want)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.close(f"connection lost: {e.strerror or e}")
                return None
            if n == 0:
                self._eof = True
                break
            bio.write(view[:n])
            got += n
            if n < want:
                break   # the kernel had no more; epoll says when it has
        return got

    def _read(self, _mask=None):
        n = self._recv()
        if n is None:
            return
        eof = self._eof
        tls, conn, buf, view, bio = self.tls, self.conn, _READ_BUF, _READ_VIEW, self._in
        while bio.pending:   # a read with nothing to decrypt would only raise
            try:
                m = tls.read(READ_CHUNK_B, buf)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                eof = True
                break
            except ssl.SSLError as e:
                self._send_cipher()
                if self.state == HELLO and not self.server_side:
                    self.failure = tls_failure(e)
                    self.close(f"hub refused us: {ssl_reason(e)}")
                else:
                    self.close(f"TLS error: {ssl_reason(e)}")
                return
            if not m:
                eof = True
                break
            conn.receive_data(view[:m])
        if n > 0:
            self.last_rx = self.loop.clock()
        frames_before = self.frames_in
        if self._out.pending and self._send_cipher() is None:
            return   # TLS had something to say (a key update, an alert) and the send failed
        if eof:
            conn.receive_data(b"")
        try:
            self._dispatch(conn.events())
        except ProtocolError as e:
            self.close(f"protocol violation: {e}", goodbye=str(e))
            return
        if eof and self.state != CLOSED:
            self.close(self._closed_by_peer())
            return
        if n:
            frames = self.frames_in - frames_before
            # no whole frame yet (large frames, or a split TLS record): read more next time
            want = n * FRAME_BUDGET // frames if frames else 2 * self._read_budget
            self._read_budget = max(MIN_READ_B, min(READ_BUDGET_B, want))

    def _dispatch(self, events):
        on_frame = self.on_frame
        for ev in events:
            if self.state == CLOSED:
                return
            if type(ev) is wire.Frame:
                self.frames_in += 1
                self.bytes_in += len(ev.data)
                if self.state == UP:
                    on_frame(self, ev.data if ev.vnet else PLAIN_HDR + ev.data)
            elif type(ev) is wire.Hello:
                self.peer = ev
                self.name = ev.node
                self.vnet = self.conn.vnet
                self.flood_limits = self.conn.flood_limits
                if self.on_up is not None:
                    problem = self.on_up(self)
                    if problem:
                        self.close(problem, goodbye=problem)
                        return
                self.state = advance(self.state, GREETED)
                self.up_since = self.loop.clock()
                self._deadline.cancel()
            elif type(ev) is wire.Limits:
                if self.on_limits is not None:
                    self.on_limits(self, ev)
            elif type(ev) is wire.Goodbye:
                self.close(f"peer said goodbye ({ev.reason or 'no reason'})")
            elif type(ev) is wire.ConnectionClosed:
                self.close(self._closed_by_peer())

    def _closed_by_peer(self) -> str:
        if self.state == HELLO and not self.server_side:
            return ("the hub closed the connection after the TLS handshake, before its hello: "
                    "it refused this spoke (revoked certificate? see the hub's log)")
        return "peer closed the connection"

    def _pause_io(self):
        self._update_interest()

    def _resume_io(self):
        self.last_rx = self.loop.clock()   # the silence while paused was ours
        if self.state in (HELLO, UP):
            self._update_interest()
            self.loop.again(self.sock, self._read)

    # -- writing ---------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        out = self.out
        return out.end - out.start + len(self._cipher)

    @property
    def congested(self) -> bool:
        out = self.out
        return out.end - out.start + len(self._cipher) > self._high_water_b

    def send_frame(self, data) -> None:
        """Queue one frame (vnet form) for the end-of-pass flush."""
        out = self.out
        if self.state != UP or out.end - out.start > (self._high_water_b if self.stalled
                                                      else self._hard_cap_b):
            self.drops += 1
            return
        if self.vnet:
            out.put2(self.conn.frame_header(data, True), data)
            self.frames_out += 1
            self.bytes_out += len(data)
        elif needs_work(data):
            frames = plain_frames(self, data, f"session {self.name}")
            for frame in frames:
                out.put2(self.conn.frame_header(frame), frame)
                self.bytes_out += len(frame)
            self.frames_out += len(frames)
        else:
            frame = memoryview(data)[VNET_HDR_LEN:]
            out.put2(self.conn.frame_header(frame), frame)
            self.frames_out += 1
            self.bytes_out += len(data) - VNET_HDR_LEN
        self.loop.want_flush(self, self.flush)

    def send_limits(self, broadcast_pps: int, multicast_pps: int,
                    unknown_unicast_pps: int) -> None:
        """Tell the peer the flood rates we accept from it (needs `flood_limits`)."""
        if self.state not in (CLOSING, CLOSED):
            self.out.put(self.conn.limits(broadcast_pps, multicast_pps, unknown_unicast_pps))
            self.loop.want_flush(self, self.flush)

    def send_keepalive(self) -> None:
        if self.state == UP:
            self.out.put(self.conn.keepalive())
            self.loop.want_flush(self, self.flush)

    def flush(self) -> None:
        if self.state in (CONNECTING, HANDSHAKE, CLOSED):
            return
        out = self.out
        if self._send_out(out, self.sock) is None:
            return
        queued = out.end - out.start
        if not queued and not self._cipher:
            self._set_want_write(False)
            if self.state == CLOSING:
                self._said_goodbye()
                return
        if queued < self._low_water_b and (self.waiters or self.stalled):
            self._drained()

    def _send_cipher(self):
        """Give the kernel the ciphertext waiting, as much as it takes: True when all of it
        went, False when some waits for room, None if the connection failed."""
        if self._out.pending:
            self._cipher = (bytes(self._cipher) + self._out.read()) if self._cipher \
                else self._out.read()
        if not self._cipher:
            return True
        try:
            n = self.sock.send(self._cipher)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self.close(f"connection lost while sending: {e.strerror or e}")
            return None
        self.last_tx = self.loop.clock()
        self._cipher = memoryview(self._cipher)[n:] if n < len(self._cipher) else b""
        return not self._cipher

    def _send_out(self, out, sock):
        """Encrypt and send queued records, a chunk at a time; False when the kernel is full,
        None if the connection failed."""
        tls = self.tls
        while True:
            if self._cipher or self._out.pending:
                done = self._send_cipher()
                if not done:
                    if done is False:
                        self._set_want_write(True)
                    return done
            start = out.start
            size = min(WRITE_CHUNK_B, out.end - start)
            if not size:
                return True
            try:
                if size <= SMALL_WRITE_B:   # a copy is cheaper than a view for a few frames
                    tls.write(out.data[start:start + size])
                else:
                    with memoryview(out.data) as view, view[start:start + size] as chunk:
                        tls.write(chunk)
            except ssl.SSLError as e:
                self.close(f"TLS error while sending: {ssl_reason(e)}")
                return None
            out.consume(size)

    def _set_want_write(self, want: bool) -> None:
        if want != self._want_write:
            self._want_write = want
            self._update_interest()

    def _update_interest(self):
        state = self.state
        if state == UP or state == HELLO:
            mask = (0 if self.paused else READ) | (WRITE if self._want_write else 0)
            # reading only (the usual case) calls _read directly: one call fewer per wake-up
            self.loop.watch(self.sock, mask, self._read if mask == READ else self._on_io)
        elif state == CLOSING:   # reading nothing: only the last words leaving matter
            self.loop.watch(self.sock, WRITE if self._want_write else 0, self._on_io)

    # -- ending ----------------------------------------------------------------------
    def goodbye(self, reason: str, linger_s: float = 1.0) -> None:
        """Say goodbye and return at once; the session closes (and `on_close` hears of it)
        once its output has left, or after `linger_s` if it does not."""
        if self.state == CLOSING:
            return
        if self.state not in (HELLO, UP):
            self.close(f"goodbye: {reason}")
            return
        self.state = advance(self.state, GOODBYE_SAID)
        self.close_reason = f"goodbye: {reason}"
        self.loop.forget(self.sock)     # read nothing more, not even a read already due
        self._want_write = False
        self._release_waiters()         # nothing more is sent here: they need not wait
        self._deadline.cancel()
        self._deadline = self.loop.call_later(linger_s, self._said_goodbye)
        try:
            self.out.put(self.conn.goodbye(reason))
        except ProtocolError:
            pass
        self.flush()

    def _said_goodbye(self):
        """The goodbye has left, or the linger is over."""
        self.close(self.close_reason)

    def close(self, reason: str, goodbye: str | None = None) -> None:
        """End the session now; with `goodbye`, first tell the peer why, as far as the
        kernel takes it at once."""
        state = self.state
        if state == CLOSED:
            return
        # CLOSED first: a send failing below returns at once instead of closing again
        self.state = advance(state, ENDED)
        self.close_reason = reason
        if goodbye and state in (HELLO, UP):
            try:
                self.out.put(self.conn.goodbye(goodbye[:200]))
                self._send_out(self.out, self.sock)
            except (ProtocolError, OSError):
                pass
        self._deadline.cancel()
        self.loop.forget(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass
        self.out.clear()
        self._cipher = b""
        self._release_waiters()
        if self.on_close is not None:
            self.on_close(self, reason)

    # -- reporting -------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        """What `status` shows of this session; `id` tells a new session from a kept one."""
        return {
            "id": self.id,
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
            "vnet": self.vnet,
            "flood_limits": self.flood_limits,
            "soft_offloads": self.soft_offloads,
            "offload_errors": self.offload_errors,
            "stalled": self.stalled,
        }
