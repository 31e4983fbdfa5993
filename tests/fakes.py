"""In-memory stand-ins for the small interfaces hub and spoke see, and loop helpers.

A switch port is anything with `name`, `send_frame(frame)`, `congested`, `pause()`,
`resume()` and `add_waiter(source)`; a session adds the hello facts (`cn`, `name`,
`peer`) and `goodbye()`. The fakes record every call so a test can assert on it.
"""

import itertools
import socket
import struct
import threading
from pathlib import Path

from l2vpn.eventloop import READ
from l2vpn.wire import Hello


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakePort:
    """A switch port that keeps what it is sent; the test sets `congested`."""

    def __init__(self, name: str, congested: bool = False):
        self.name = name
        self.congested = congested
        self.stalled = False
        self.sent = []
        self.frames_out = self.bytes_out = 0
        self.drops = 0
        self.paused = False
        self.pauses = self.resumes = 0
        self.waiters = []

    def __repr__(self):
        return f"<FakePort {self.name}>"

    def send_frame(self, frame) -> None:
        self.sent.append(bytes(frame))
        self.frames_out += 1
        self.bytes_out += len(frame)

    def pause(self) -> None:
        self.pauses += 1
        self.paused = True

    def resume(self) -> None:
        self.resumes += 1
        self.paused = False

    def add_waiter(self, source) -> None:
        self.waiters.append(source)


_session_ids = itertools.count(1)   # as transport's: every fake session its own id


class FakeSession(FakePort):
    """A session that finished its hello: a port plus the facts hub._on_up reads."""

    def __init__(self, cn: str, name: str | None = None, mtu: int = 1500,
                 remote: str = "192.0.2.1:40000", up_since: float | None = 0.0,
                 flood_limits: bool = False):
        super().__init__(cn)
        self.id = next(_session_ids)
        self.cn = cn
        self.name = name or cn
        self.peer = Hello(1, self.name, mtu, 0)
        self.remote = remote
        self.state = "up"
        self.vnet = False
        self.flood_limits = flood_limits
        self.up_since = up_since
        self.goodbyes = []
        self.limits = []     # what send_limits() was given

    def __repr__(self):
        return f"<FakeSession {self.cn}>"

    def send_limits(self, *rates) -> None:
        self.limits.append(rates)

    def goodbye(self, reason: str, linger_s: float = 1.0) -> None:
        self.goodbyes.append(reason)
        self.state = "closed"

    def snapshot(self, now: float) -> dict:
        return {"id": self.id, "node": self.name, "cn": self.cn, "remote": self.remote,
                "state": self.state, "uptime_s": now - (self.up_since or now), "frames_in": 0,
                "frames_out": self.frames_out, "bytes_in": 0, "bytes_out": self.bytes_out,
                "drops": self.drops}


def run_until(loop, cond, timeout_s: float = 5.0, what: str = "the condition") -> None:
    """Run `loop` until `cond()` holds (checked every millisecond) or fail after `timeout_s`."""
    deadline = loop.clock() + timeout_s
    handle = None

    def check():
        nonlocal handle
        if cond() or loop.clock() > deadline:
            loop.stop()
            return
        handle = loop.call_later(0.001, check)

    handle = loop.call_later(0, check)
    try:
        loop.run()
    finally:
        handle.cancel()
    assert cond(), f"timed out after {timeout_s} s waiting for {what}"


def run_bounded(loop, timeout_s: float = 5.0) -> None:
    """Run `loop` until something calls stop(); fail if that takes over `timeout_s`."""
    timed_out = []

    def expire():
        timed_out.append(True)
        loop.stop()

    guard = loop.call_later(timeout_s, expire)
    try:
        loop.run()
    finally:
        guard.cancel()
    assert not timed_out, f"the loop was not stopped within {timeout_s} s"


def call_in_thread(loop, fn, timeout_s: float = 5.0):
    """Run the blocking `fn()` in a thread while `loop` serves it; return or raise its outcome."""
    outcome = {}
    wake_r, wake_w = socket.socketpair()      # the thread's "done" wakes the loop at once

    def worker():
        try:
            outcome["value"] = fn()
        except BaseException as e:           # handed over to the test thread
            outcome["error"] = e
        finally:
            wake_w.send(b"x")

    loop.watch(wake_r, READ, lambda _m: loop.stop())
    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        run_bounded(loop, timeout_s=timeout_s)
    finally:
        t.join(timeout_s)
        loop.forget(wake_r)
        wake_r.close()
        wake_w.close()
    assert not t.is_alive(), f"{fn} still running after {timeout_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def tcp_super_frame(payload: bytes, mss: int = 1448, vlan: int | None = None) -> bytes:
    """A TCPv4 GSO super-frame in vnet form, as an offloading TAP hands it over: the
    virtio-net header asks for segmentation at `mss`, and the TCP checksum field holds
    only the pseudo-header sum, for whoever segments to complete."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Dot1Q, Ether
    eth = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    pkt = eth / IP(src="198.19.0.2", dst="198.19.0.3", id=7) / TCP(
        sport=40000, dport=5201, seq=1000, flags="PA") / payload
    frame = bytearray(bytes(pkt))
    l3 = 14 if vlan is None else 18
    l4 = l3 + 20
    words = struct.unpack(">4H", bytes(frame[l3 + 12:l3 + 20]))   # source, destination
    total = sum(words) + 6 + len(frame) - l4
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into(">H", frame, l4 + 16, total)
    hdr = struct.pack("<BBHHHH", 1, 1, l4 + 20, mss, l4, 16)   # NEEDS_CSUM, GSO_TCPV4
    return hdr + bytes(frame)


def eth(dst: bytes, src: bytes) -> bytes:
    """A minimal frame in vnet form (a zero virtio-net header first), as ports hand it over."""
    from l2vpn.offload import PLAIN_HDR
    return PLAIN_HDR + dst + src + b"\x08\x00" + bytes(46)


def metric_samples(text: str) -> dict:
    """{(sample name, sorted label pairs): value} of a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def hub_config(tmp_path, port: int = 7443, aging_s: float = 60.0):
    """A hub's config with no TAP, for a Hub on fake ports (its TLS files are never read)."""
    from l2vpn.config import (HubConfig, KeepaliveConfig, ListenConfig, ManagementConfig,
                              SwitchConfig, TLSConfig)
    return HubConfig(
        path=tmp_path / "hub.yaml", node="hub", listen=ListenConfig("127.0.0.1", port),
        tls=TLSConfig(Path("ca.crt"), Path("hub.crt"), Path("hub.key")), tap=None,
        switch=SwitchConfig(aging_s=aging_s, max_entries=1024),
        management=ManagementConfig(socket=tmp_path / "hub.sock"), keepalive=KeepaliveConfig())


# -- edges: what a node would open on the host, in memory -----------------------------


class FakeTapDevice:
    """A TAP without /dev/net/tun: one end of a SOCK_SEQPACKET pair (each write one frame).
    The test holds `lan`, the other end: what it sends there the node reads off its TAP."""

    vnet_hdr = False
    offloads = 0
    needs_net_admin_at_close = False

    def __init__(self, name: str, mtu: int = 1500, mac: bytes = b"\x02\x00\x00\x00\x00\x99"):
        self.name, self.mtu, self.mac = name, mtu, mac
        self.lan, self._dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._dev.setblocking(False)
        self.lan.settimeout(5.0)
        self.fd = self._dev.fileno()
        self.read_size = mtu + 18

    def close(self) -> None:
        self._dev.close()
        self.lan.close()


class FakeNetwork:
    """Listeners and connects inside one process over socket pairs: no ports, no root.

    `edges()` gives a node Edges whose TAP is a FakeTapDevice (kept in `taps` by name),
    whose listener is a doorbell this network rings when a spoke connects to its address,
    and which takes no signals (several nodes share one process)."""

    def __init__(self):
        self.listeners = {}    # (address, port) -> FakeListener
        self.taps = {}         # TAP name -> FakeTapDevice
        self._ports = itertools.count(40000)

    def edges(self):
        from l2vpn.edges import Edges
        return Edges(tap=self._tap, listen=self._listen, connect=self._connect, signals=False)

    def _tap(self, tap_cfg, node):
        dev = FakeTapDevice(tap_cfg.name, tap_cfg.mtu)
        self.taps[tap_cfg.name] = dev
        return dev

    def _listen(self, address, port):
        listener = FakeListener(self, (address, port))
        self.listeners[(address, port)] = listener
        return listener

    def _connect(self, host, port):
        from l2vpn.errors import TransportError
        listener = self.listeners.get((host, port))
        if listener is None:
            raise TransportError(f"cannot connect to {host}:{port}: connection refused")
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        listener.ring(theirs, ("198.18.0.99", next(self._ports)))
        return ours, f"{host}:{port}"


class FakeListener:
    """What `accept()` hands out is queued by FakeNetwork._connect; the fd is readable while
    anything waits, as a listening socket's is."""

    def __init__(self, network, where):
        self.network, self.where = network, where
        self._bell_r, self._bell_w = socket.socketpair()
        self._bell_r.setblocking(False)
        self.queue = []

    def fileno(self) -> int:
        return self._bell_r.fileno()

    def ring(self, sock, addr) -> None:
        self.queue.append((sock, addr))
        self._bell_w.send(b"x")

    def accept(self):
        if not self.queue:
            raise BlockingIOError
        self._bell_r.recv(1)
        return self.queue.pop(0)

    def close(self) -> None:
        self.network.listeners.pop(self.where, None)
        for sock, _ in self.queue:
            sock.close()
        self._bell_r.close()
        self._bell_w.close()


def edges():
    """Edges for a node a test drives through its parts and never starts."""
    return FakeNetwork().edges()
