"""Live capture of switch ports as pcapng: the taps inside a node, and the client that
saves what they stream.

Theory of operation
-------------------
Nothing here runs while nobody captures. The first `capture` request makes a node's
`Taps` and registers it in `node.port_watchers`; the last capture to end unregisters it.
While a capture wants a port, the port's `on_frame` (what it received, INBOUND) and
`send_frame` (what the switch sends out of it, OUTBOUND) are replaced on the instance by
wrappers that copy the frame into every interested capture, then call the original; when
no capture wants the port any more the originals are put back, so the data path pays
nothing again. One wrapper per port, however many captures.

Each `Capture` is a management `Stream`. Its buffer is bounded in frames and bytes: a
frame that does not fit is counted as lost for its port, never waited for, so a slow
reader cannot slow forwarding. Frames are copied as they cross (vnet form, stamped with
wall-clock time) and turned into pcapng only when the client pulls: segmented with
`offload.to_plain` into what a host on a 1500-byte Ethernet sees, unless `gso` asks for
super-frames whole (the vnet header is then dropped). Each port becomes a pcapng
interface when the capture starts (ports up then) or when its first frame is written.

A capture ends when the client shuts down its side (Ctrl-C, --seconds), after `count`
frames, or when the node stops; it then writes an Interface Statistics Block per port
(frames seen, frames lost) so the file says what it misses. A port that goes away is
unwrapped; one that comes (a spoke connecting) is wrapped if a capture wants it.

Port names that are not up are accepted when they could be a port (on a hub, any valid
node name: a spoke that has not connected yet; on a spoke, `hub`), and captured once the
port comes up; the client is told which ones it waits for. Any other name is refused
with the list of ports that exist.

The client (`receive`) writes whole blocks only, so a capture cut anywhere, even by the
node dying, leaves a valid file.
"""

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from l2vpn import pcapng
from l2vpn.config import NODE_NAME
from l2vpn.errors import L2VPNError
from l2vpn.management import Stream
from l2vpn.offload import VNET_HDR_LEN, OffloadError, needs_work, to_plain

BUFFER_B = 8 << 20          # per capture: bytes of frames waiting for the client
BUFFER_FRAMES = 32768       # per capture: frames waiting for the client
GRACE_S = 2.0               # the client waits this long for the end after asking for it

RUNNING, ENDING, DONE = "running", "ending", "done"


class CaptureRefused(L2VPNError):
    """The node answered the capture request with an error (an unknown port, say)."""


# -- the node side (no I/O: the management server moves the bytes) ---------------------


class _Wrap:
    """One port's tap: its on_frame and send_frame replaced on the instance."""

    def __init__(self, name, port, captures):
        self.name = name
        self.port = port
        self.captures = captures            # shared with the closures: mutated in place
        self.had_send = "send_frame" in vars(port)
        self.orig_on_frame = on_frame = port.on_frame
        self.orig_send = send = port.send_frame

        def tapped_on_frame(p, frame):
            for c in captures:
                c.take(name, pcapng.INBOUND, frame)
            on_frame(p, frame)

        def tapped_send_frame(frame):
            for c in captures:
                c.take(name, pcapng.OUTBOUND, frame)
            send(frame)

        self.on_frame, self.send_frame = tapped_on_frame, tapped_send_frame
        if on_frame is not None:
            port.on_frame = tapped_on_frame
        port.send_frame = tapped_send_frame

    def undo(self):
        port = self.port
        if port.on_frame is self.on_frame:   # unless someone has replaced it since
            port.on_frame = self.orig_on_frame
        if vars(port).get("send_frame") is self.send_frame:
            if self.had_send:
                port.send_frame = self.orig_send
            else:
                del port.send_frame


class Taps:
    """A node's capture taps: which ports are wrapped, for which captures."""

    def __init__(self, ports, watchers):
        self._ports = ports             # () -> {name: port}, the ports up now
        self._watchers = watchers       # the node's port_watchers
        self.captures = []
        self.wrapped = {}               # port name -> _Wrap

    @classmethod
    def of(cls, node) -> "Taps":
        """The node's taps, made at its first capture."""
        taps = getattr(node, "capture_taps", None)
        if taps is None:
            taps = node.capture_taps = cls(node.ports, node.port_watchers)
        return taps

    def add(self, capture) -> None:
        self.captures.append(capture)
        if self not in self._watchers:
            self._watchers.append(self)
        for name, port in self._ports().items():
            if capture.wants(name):
                self._wrap(name, port).captures.append(capture)

    def remove(self, capture) -> None:
        if capture not in self.captures:
            return
        self.captures.remove(capture)
        for name, wrap in list(self.wrapped.items()):
            if capture in wrap.captures:
                wrap.captures.remove(capture)
            if not wrap.captures:
                wrap.undo()
                del self.wrapped[name]
        if not self.captures and self in self._watchers:
            self._watchers.remove(self)

    def _wrap(self, name, port) -> _Wrap:
        wrap = self.wrapped.get(name)
        if wrap is not None and wrap.port is not port:
            wrap.undo()
            wrap = None
        if wrap is None:
            wrap = self.wrapped[name] = _Wrap(name, port, [])
        return wrap

    # node.port_watchers
    def port_up(self, name, port) -> None:
        wanted = [c for c in self.captures if c.wants(name)]
        old = self.wrapped.pop(name, None)
        if old is not None:
            old.undo()
        if wanted:
            self._wrap(name, port).captures.extend(wanted)

    def port_down(self, name, port) -> None:
        wrap = self.wrapped.get(name)
        if wrap is not None and wrap.port is port:
            wrap.undo()
            del self.wrapped[name]


class Capture(Stream):
    """One client's capture: a bounded buffer of frames, pulled as pcapng."""

    timeout_s = None    # it runs until the client, `count` or the node ends it

    def __init__(self, taps, names=None, *, gso=False, count=None, node="", comment=None,
                 clock=time.time, max_bytes=BUFFER_B, max_frames=BUFFER_FRAMES):
        self.taps = taps
        self.names = None if not names else frozenset(names)
        self.gso = gso
        self.count = count
        self.node = node
        self.clock = clock
        self.max_bytes, self.max_frames = max_bytes, max_frames
        self.state = RUNNING
        self.started = clock()
        self.ended = None
        self.seen = {}          # port name -> frames that crossed it while capturing
        self.lost = {}          # port name -> of those, frames the full buffer refused
        self.written = 0        # packet blocks made
        self._queue = deque()   # (time_s, port name, direction, frame in vnet form)
        self._queued_b = 0
        self._ifaces = {}       # port name -> pcapng interface id
        self._out = [pcapng.section_header(comment=comment)]
        self._asleep = False
        self.wake = None
        taps.add(self)
        for name, wrap in sorted(taps.wrapped.items()):   # the ports up now, listed first
            if self in wrap.captures:
                self._iface(name)

    def wants(self, name) -> bool:
        return self.state == RUNNING and (self.names is None or name in self.names)

    def take(self, name, direction, frame) -> None:
        """A frame crossing a port (data path: copy, or count it lost, and go on)."""
        self.seen[name] = self.seen.get(name, 0) + 1
        n = len(frame)
        if len(self._queue) >= self.max_frames or self._queued_b + n > self.max_bytes:
            self.lost[name] = self.lost.get(name, 0) + 1
            return
        self._queue.append((self.clock(), name, direction, bytes(frame)))
        self._queued_b += n
        if self._asleep:
            self._asleep = False
            self.wake()

    def _iface(self, name) -> int:
        iid = self._ifaces.get(name)
        if iid is None:
            iid = self._ifaces[name] = len(self._ifaces)
            where = f"l2vpn {self.node}" if self.node else "l2vpn"
            self._out.append(pcapng.interface(name, f"{where} port {name}"))
        return iid

    def _plain(self, frame):
        """(frame, comment) pairs as a host on the wire sees them (or whole with --gso)."""
        if self.gso or not needs_work(frame):
            return [(memoryview(frame)[VNET_HDR_LEN:], None)]
        try:
            return [(f, None) for f in to_plain(frame)]
        except OffloadError as e:
            return [(memoryview(frame)[VNET_HDR_LEN:], f"l2vpn: kept as it came: {e}")]

    def pull(self, limit):
        out = self._out
        size = sum(map(len, out))
        queue = self._queue
        while size < limit and queue and self.state != DONE:
            t, name, direction, frame = queue.popleft()
            self._queued_b -= len(frame)
            iid = self._iface(name)
            for data, comment in self._plain(frame):
                block = pcapng.packet(iid, t, data, direction, comment)
                out.append(block)
                size += len(block)
                self.written += 1
                if self.count is not None and self.written >= self.count:
                    self._end()
                    queue.clear()
                    self._queued_b = 0
                    break
        if self.state == ENDING and not queue:
            self._statistics()
            self.state = DONE
        elif self.state == DONE and not out:
            return None
        self._out = []
        if not out:
            self._asleep = True
            return b""
        return b"".join(out)

    def _statistics(self):
        now = self.ended or self.clock()
        for name in sorted(set(self.seen) | set(self.lost)):
            self._iface(name)
        for name, iid in self._ifaces.items():
            self._out.append(pcapng.statistics(iid, now, self.started, self.seen.get(name, 0),
                                               self.lost.get(name, 0)))

    def _end(self):
        if self.state == RUNNING:
            self.state = ENDING
            self.ended = self.clock()
            self.taps.remove(self)

    def client_done(self):
        self._end()
        if self._asleep and self.wake is not None:
            self._asleep = False
            self.wake()

    def close(self):
        if self.state == RUNNING:
            self.taps.remove(self)
        self.state = DONE
        self._queue.clear()
        self._out = []


def request_line(ports=(), gso=False, count=None) -> str:
    """The management request that starts a capture."""
    return "capture " + json.dumps({"ports": list(ports or ()), "gso": bool(gso),
                                    "count": count})


LIST_REQUEST = "capture " + json.dumps({"list": True})   # -> {"node", "role", "ports"}


def serve(node, text: str):
    """Answer a `capture` request on `node`: a Capture stream, or a dict (error, list)."""
    try:
        args = json.loads(text) if text.strip() else {}
    except ValueError:
        return {"error": "capture: the request is not JSON"}
    if not isinstance(args, dict):
        return {"error": "capture: the request is not a JSON object"}
    up = node.ports()
    if args.get("list"):
        return {"node": node.cfg.node, "role": node.role, "ports": sorted(up)}
    names = args.get("ports") or []
    count = args.get("count")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return {"error": "capture: ports must be a list of port names"}
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or count < 1):
        return {"error": "capture: count must be a positive number of frames"}
    waiting = [n for n in dict.fromkeys(names) if n not in up]
    impossible = [n for n in waiting if not _could_be_port(node, n)]
    if impossible:
        return {"error": f"no port {', '.join(impossible)} on {node.role} {node.cfg.node} "
                         f"(ports: {', '.join(sorted(up)) or 'none up'})"}
    comment = None
    if waiting:
        comment = (f"port {', '.join(waiting)} not up on {node.cfg.node}: captured once it "
                   f"comes up (up now: {', '.join(sorted(up)) or 'none'})")
    return Capture(Taps.of(node), names, gso=bool(args.get("gso")), count=count,
                   node=node.cfg.node, comment=comment)


def _could_be_port(node, name) -> bool:
    """A hub's ports are its TAP and spokes named by certificate; a spoke's is its hub."""
    if node.role == "spoke":
        return name == "hub"
    return NODE_NAME.fullmatch(name) is not None


# -- the client ----------------------------------------------------------------------


@dataclass
class Summary:
    """How a capture went, as the client saw it."""

    frames: int = 0             # packet blocks written
    lost: int | None = None     # frames the node's buffer lost; None without statistics
    notes: list = field(default_factory=list)
    reader_gone: bool = False   # the output (a pipe) was closed under us

    def line(self) -> str:
        lost = ("lost count unknown: the capture was cut before its statistics"
                if self.lost is None else f"{self.lost} lost (the reader was too slow)"
                if self.lost else "none lost")
        return f"{self.frames} frame{'' if self.frames == 1 else 's'} captured, {lost}"


def receive(sock, write, *, count=None, seconds=None, stop=None, grace_s=GRACE_S,
            clock=time.monotonic, note=lambda text: None) -> Summary:
    """Read a capture's answer from `sock` and `write` it, whole blocks at a time, until it
    ends. `stop` (a socket) becoming readable, `count` frames or `seconds` ask the node to
    end it; it then has `grace_s` to send the rest. Asked twice, it stops at once."""
    sock.setblocking(False)
    summary = Summary()
    buf = bytearray()
    first = True
    deadline = clock() + seconds if seconds is not None else None
    ending_at = None

    def end():
        nonlocal ending_at
        if ending_at is None:
            ending_at = clock() + grace_s
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    while True:
        now = clock()
        if deadline is not None and now >= deadline:
            end()
        if ending_at is not None and now >= ending_at:
            break
        waits = [t - now for t in (deadline if ending_at is None else None, ending_at)
                 if t is not None]
        watched = [sock] + ([stop] if stop is not None else [])
        ready, _, _ = select.select(watched, [], [], max(0.0, min(waits)) if waits else None)
        if stop is not None and stop in ready:
            try:
                asks = len(stop.recv(64))     # a byte per signal
            except BlockingIOError:
                asks = 0
            if asks and ending_at is None:
                end()
                asks -= 1
            if asks:
                break
        if sock not in ready:
            continue
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            continue
        except OSError as e:
            note(f"the node's connection failed: {e.strerror}")
            break
        if not data:
            break
        if first and data[:1] == b"{":
            raise _refusal(sock, data)
        first = False
        buf += data
        try:
            blocks, used = pcapng.split(buf)
        except pcapng.FormatError as e:
            raise L2VPNError(f"the node sent something that is not a capture: {e}") from None
        del buf[:used]
        kept = []
        for kind, block in blocks:
            if kind == pcapng.EPB:
                if count is not None and summary.frames >= count:
                    continue
                summary.frames += 1
            elif kind == pcapng.ISB:
                summary.lost = (summary.lost or 0) + pcapng.dropped_of(block)
            elif kind == pcapng.SHB:
                comment = pcapng.comment_of(block)
                if comment:
                    summary.notes.append(comment)
                    note(comment)
            kept.append(block)
        if kept:
            try:
                write(b"".join(kept))
            except BrokenPipeError:
                summary.reader_gone = True
                break
        if count is not None and summary.frames >= count:
            end()
    return summary


def _refusal(sock, data) -> CaptureRefused:
    sock.setblocking(True)
    sock.settimeout(GRACE_S)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    try:
        reply = json.loads(data)
    except ValueError:
        return CaptureRefused("the node refused the capture with an unreadable answer")
    return CaptureRefused(str(reply.get("error", reply)) if isinstance(reply, dict)
                          else str(reply))


class Output:
    """Where whole blocks go: a file made at the first write, or stdout for "-"; flushed
    at every write so a live reader (tshark -r -, wireshark -k -i -) sees them."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            if self.path == "-":
                self._file = sys.stdout.buffer
            else:
                try:
                    self._file = open(self.path, "wb")
                except OSError as e:
                    raise L2VPNError(f"cannot write {self.path}: {e.strerror}") from None
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self.path != "-":
            self._file.close()


@contextlib.contextmanager
def stop_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """A socket that becomes readable, a byte per signal, on Ctrl-C or SIGTERM: the
    capture then ends cleanly instead of being cut in the middle of a write. None outside
    the main thread, where signals cannot be caught."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    old = {s: signal.signal(s, lambda *_: None) for s in signals}
    try:
        yield r
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(old_fd)
        r.close()
        w.close()
