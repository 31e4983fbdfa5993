"""Kernel-made GSO fixtures: super-frames a real TAP hands over, and the kernel's own
segmentation of each, so l2vpn.offload can be checked against Linux byte for byte.

Theory of operation
-------------------
Capture ("the wire"): namespaces l2off<pid>-<n>-a and -b each hold a TAP "l2c0" opened
with IFF_VNET_HDR and every offload (l2vpn.tap.Tap), 198.18.77.1/24 and .2/24, plus an
802.1Q sub-interface l2c0.42 (198.18.78.x/24) and a QinQ stack l2c0.s7 (802.1ad 7) /
l2c0.q8 (802.1Q 8, 198.18.79.x/24). IPv6 runs on the link-local addresses the kernel
gives every link (DAD off), so no other address is needed. A pump thread in this process
moves vnet frames between the two TAP fds unchanged, as l2vpn does, and records what a
sends. The TAPs' gso_max_size is lowered so super-frames stay small (so do fixtures).
Traffic: TCP over IPv4, IPv6, the VLAN and the QinQ stack (a first flight, and a tail
that carries FIN/PSH: the pump holds the first flight back until the FIN is queued),
TCP with ECN where the pump marks CE on one frame so the sender answers with CWR, UDP
with UDP_SEGMENT (USO) over v4 and v6 (where the TAP takes USO), and short TCP/UDP
frames that only carry NEEDS_CSUM. A kernel without CONFIG_VLAN_8021Q cannot make the
sub-interfaces; then the captured TCPv4 frames get their tags added here (csum_start
moved along), and only the segmentation of those is the kernel's.

Segmentation ("the reference"): namespace l2off<pid>-<n>-seg holds a bridge with two
ports: TAP "l2sv0" (vnet header, offloads) and TAP "l2sp0" (plain: no vnet header, so no
NETIF_F_HW_CSUM/TSO/USO). A vnet frame written into l2sv0 is bridged to l2sp0, and the
kernel's validate_xmit_skb() segments and checksums it in software on the way out; tun
delivers written frames synchronously, so a marker frame written next closes the batch
(no marker-free output at all means the kernel dropped the frame). IPv6 and
br_netfilter are off in that namespace, so nothing else crosses the bridge and no hook
rewrites a frame. `synthetic_cases()` adds hand-made edge cases (TCP and IPv4 options,
IPv6 extension headers, odd gso_size, no NEEDS_CSUM, "not really GSO", odd checksum
seeds, wrong length fields) that go through the same reference.

`main()` writes tests/unit/data/kernel_gso.json: the kernel release and, for each case,
the vnet-form frame and the kernel's plain frames (hex; null where the kernel drops it).
Every namespace is removed in a finally block; tests/netns/test_offload_kernel.py runs
the same functions live.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
if __name__ == "__main__":            # run as a script: on the checkout's venv
    import bootstrap
    bootstrap.enter_or_exit()

from pyroute2 import netns  # noqa: E402

from labnet import in_netns, socket_in, write_sysctl  # noqa: E402
from l2vpn.offload import (GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4,  # noqa: E402
                           F_NEEDS_CSUM, PLAIN_HDR, VNET_HDR_LEN)
from l2vpn.tap import Tap  # noqa: E402

FIXTURE = REPO / "tests" / "unit" / "data" / "kernel_gso.json"
TAP = "l2c0"
NET = {"": "198.18.77", ".42": "198.18.78", ".q8": "198.18.79"}
MAC_A, MAC_B = "02:6c:32:00:00:0a", "02:6c:32:00:00:0b"
TCP_PORT, UDP_PORT = 5001, 5002
GSO_MAX_SIZE = 6000        # super-frames of at most 4 segments (small fixtures)
MSS4 = 1448                # 1500 - 20 - 20 - 12 (timestamps)
SOL_UDP, UDP_SEGMENT = 17, 103
USO_SIZE = 1200
MARKER_TYPE = 0x88B5       # IEEE local experimental ethertype
WAIT_S = 5.0
TSO = 0x01 | 0x02 | 0x04 | 0x08    # TUN_F_CSUM | TSO4 | TSO6 | TSO_ECN
USO = 0x20 | 0x40                  # TUN_F_USO4 | USO6

_VNET = struct.Struct("<BBHHHH")
_serial = itertools.count(1)


class CaptureError(RuntimeError):
    """The lab could not make or capture the traffic it wanted."""


# ----------------------------------------------------------------------- namespaces


def _ip(ns: str, *args: str) -> None:
    out = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise CaptureError(f"ip -n {ns} {' '.join(args)}: {out.stderr.strip()}")


@contextlib.contextmanager
def namespaces(*tags: str):
    """Fresh namespaces l2off<pid>-<n>-<tag>, always removed afterwards."""
    base = f"l2off{os.getpid()}-{next(_serial)}-"
    names = []
    try:
        for tag in tags:
            netns.create(base + tag)
            names.append(base + tag)
        yield names
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                netns.remove(name)


def _open_tap(ns: str, name: str, **kw) -> Tap:
    with in_netns(ns):
        return Tap.open(name, **kw)


# -------------------------------------------------------------------- frame parsing


def parse(frame) -> dict:
    """The fields of a vnet-form frame the capture picks cases by (no checks)."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(frame)
    eth = bytes(frame[VNET_HDR_LEN:])
    info = dict(flags=flags, gso_type=gso_type, hdr_len=hdr_len, gso_size=gso_size,
                csum_start=csum_start, csum_offset=csum_offset, vlans=0, l3=None,
                proto=None, sport=None, dport=None, tcp_flags=0, payload=0, len=len(eth))
    off = 12
    etype = int.from_bytes(eth[off:off + 2], "big")
    while etype in (0x8100, 0x88A8) and len(eth) >= off + 6:
        info["vlans"] += 1
        off += 4
        etype = int.from_bytes(eth[off:off + 2], "big")
    l3 = off + 2
    if etype == 0x0800 and len(eth) >= l3 + 20:
        info["l3"], info["proto"] = 4, eth[l3 + 9]
        info["tos"] = eth[l3 + 1]
        l4 = l3 + (eth[l3] & 15) * 4
    elif etype == 0x86DD and len(eth) >= l3 + 40:
        info["l3"], info["proto"] = 6, eth[l3 + 6]
        l4 = l3 + 40
    else:
        return info
    info["l3_off"], info["l4_off"] = l3, l4
    if info["proto"] in (6, 17) and len(eth) >= l4 + 8:
        info["sport"], info["dport"] = struct.unpack_from(">HH", eth, l4)
        if info["proto"] == 6 and len(eth) >= l4 + 20:
            info["tcp_flags"] = eth[l4 + 13]
            info["payload"] = len(eth) - l4 - (eth[l4 + 12] >> 4) * 4
        else:
            info["payload"] = len(eth) - l4 - 8
    return info


def add_vlan_tags(frame, tags) -> bytes:
    """A vnet-form frame with VLAN tags ((tpid, vid), outer first) put after the MACs."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(frame)
    grow = 4 * len(tags)
    hdr = _VNET.pack(flags, gso_type, hdr_len + grow if hdr_len else 0, gso_size,
                     csum_start + grow if flags & F_NEEDS_CSUM else csum_start, csum_offset)
    eth = bytes(frame[VNET_HDR_LEN:])
    return hdr + eth[:12] + b"".join(struct.pack(">HH", t, v) for t, v in tags) + eth[12:]


def _fix_ipv4_checksum(eth: bytearray, l3: int) -> None:
    ihl = (eth[l3] & 15) * 4
    eth[l3 + 10:l3 + 12] = b"\0\0"
    s = sum(struct.unpack_from(f">{ihl // 2}H", eth, l3))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into(">H", eth, l3 + 10, s ^ 0xFFFF)


def mark_ce(frame) -> bytes:
    """The frame with its IPv4 ECN field set to CE when it was ECT (checksum fixed)."""
    info = parse(frame)
    if info["l3"] != 4 or info["tos"] & 3 not in (1, 2):
        return frame
    eth = bytearray(frame[VNET_HDR_LEN:])
    eth[info["l3_off"] + 1] |= 3
    _fix_ipv4_checksum(eth, info["l3_off"])
    return bytes(frame[:VNET_HDR_LEN]) + bytes(eth)


# --------------------------------------------------------------------------- the wire


class Pump(threading.Thread):
    """Moves vnet frames between two TAP fds unchanged, recording what a sends.

    hold() keeps a's frames back (recorded, not delivered) until release(); `mangle`, if
    set, may rewrite one of a's frames on its way (and is then cleared)."""

    def __init__(self, a: Tap, b: Tap):
        super().__init__(daemon=True, name="gso-pump")
        self.a, self.b = a, b
        self.sent: list[bytes] = []
        self.cond = threading.Condition()
        self.mangle = None
        self._held: list[bytes] | None = None
        self._stop_r, self._stop_w = os.pipe()

    def run(self) -> None:
        fds = [self.a.fd, self.b.fd, self._stop_r]
        while True:
            ready, _, _ = select.select(fds, [], [], 1.0)
            if self._stop_r in ready:
                return
            if self.b.fd in ready:
                self._drain(self.b, self.a)
            if self.a.fd in ready:
                self._drain(self.a, self.b, record=True)

    def _drain(self, src: Tap, dst: Tap, record: bool = False) -> None:
        for _ in range(64):
            try:
                frame = os.read(src.fd, src.read_size)
            except BlockingIOError:
                return
            if record:
                with self.cond:
                    self.sent.append(frame)
                    if self.mangle is not None:
                        new = self.mangle(frame)
                        if new is not frame:
                            frame, self.mangle = new, None
                    if self._held is not None:
                        self._held.append(frame)
                        frame = None
                    self.cond.notify_all()
            if frame is not None:
                with contextlib.suppress(OSError):
                    os.write(dst.fd, frame)

    def hold(self) -> None:
        with self.cond:
            self._held = []

    def release(self) -> None:
        with self.cond:
            held, self._held = self._held or [], None
        for frame in held:
            with contextlib.suppress(OSError):
                os.write(self.b.fd, frame)

    def mark(self) -> int:
        """A position in the record; wait_for() looks only after it."""
        with self.cond:
            return len(self.sent)

    def wait_for(self, pred, since: int, timeout_s: float = WAIT_S) -> bytes:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for frame in self.sent[since:]:
                    if pred(parse(frame)):
                        return frame
                since = len(self.sent)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaptureError("timed out waiting for a frame from the TAP")
                self.cond.wait(left)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(5)
        os.close(self._stop_r)
        os.close(self._stop_w)


def _sink(listener: socket.socket, stop: threading.Event) -> None:
    """Accept TCP connections and read them dry until stop is set."""
    listener.setblocking(False)
    conns: list[socket.socket] = []
    try:
        while not stop.is_set():
            ready, _, _ = select.select([listener, *conns], [], [], 0.2)
            for s in ready:
                try:
                    if s is listener:
                        conn, _ = listener.accept()
                        conn.setblocking(False)
                        conns.append(conn)
                    elif not s.recv(1 << 20):
                        conns.remove(s)
                        s.close()
                except (BlockingIOError, ConnectionError):
                    pass
    finally:
        for conn in conns:
            conn.close()


def _link_local(ns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", ifname,
                          "scope", "link"], capture_output=True, text=True, timeout=10)
    for entry in json.loads(out.stdout or "[]"):
        for addr in entry.get("addr_info", []):
            if addr.get("family") == "inet6" and "tentative" not in addr:
                return addr["local"]
    raise CaptureError(f"no link-local address on {ifname} in {ns}")


class Wire:
    """Namespaces a and b joined through two vnet TAPs and a Pump (see the module doc)."""

    def __init__(self, ns_a: str, ns_b: str):
        self.ns = {"a": ns_a, "b": ns_b}
        self.taps: dict[str, Tap] = {}
        self.vlans = True  # 802.1Q/802.1ad sub-interfaces could be made
        self.uso = False   # the TAPs took USO4/USO6 (Linux 6.2 and later)
        self.pump: Pump | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> "Wire":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        for side, mac in (("a", MAC_A), ("b", MAC_B)):
            ns = self.ns[side]
            host = "1" if side == "a" else "2"
            for knob in ("all", "default"):
                write_sysctl(ns, f"net.ipv6.conf.{knob}.accept_dad", "0")
            write_sysctl(ns, "net.ipv4.tcp_ecn", "1")
            _ip(ns, "link", "set", "lo", "up")
            self.taps[side] = _open_tap(ns, TAP, mtu=1500, vnet_hdr=True,
                                        mac=bytes.fromhex(mac.replace(":", "")),
                                        address=f"{NET['']}.{host}/24")
            offloads = self.taps[side].offloads
            if offloads & TSO != TSO:
                raise CaptureError(f"TAP offloads {offloads:#x}: this kernel lacks TSO on TAPs")
            self.uso = offloads & USO == USO
            _ip(ns, "link", "set", TAP, "gso_max_size", str(GSO_MAX_SIZE))
            try:
                _ip(ns, "link", "add", "link", TAP, "name", TAP + ".42", "type", "vlan",
                    "id", "42")
            except CaptureError:
                self.vlans = False   # a kernel without CONFIG_VLAN_8021Q
                continue
            _ip(ns, "link", "add", "link", TAP, "name", TAP + ".s7", "type", "vlan",
                "proto", "802.1ad", "id", "7")
            _ip(ns, "link", "add", "link", TAP + ".s7", "name", TAP + ".q8", "type", "vlan",
                "id", "8")
            for dev in (".42", ".s7", ".q8"):
                _ip(ns, "link", "set", TAP + dev, "gso_max_size", str(GSO_MAX_SIZE), "up")
            for dev in (".42", ".q8"):
                _ip(ns, "addr", "add", f"{NET[dev]}.{host}/24", "dev", TAP + dev)
        self.pump = Pump(self.taps["a"], self.taps["b"])
        self.pump.start()
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            lst = self._socket("b", family)
            if family == socket.AF_INET6:
                lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind((addr, TCP_PORT))
            lst.listen(16)
            t = threading.Thread(target=_sink, args=(lst, self._stop), daemon=True)
            t.start()
            self._threads.append(t)
            udp = self._socket("b", family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            udp.bind((addr, UDP_PORT))
        with in_netns(self.ns["a"]):
            self.ifindex_a = socket.if_nametoindex(TAP)
        self.ll_b = _link_local(self.ns["b"], TAP)

    def _socket(self, side: str, family: int, type: int = socket.SOCK_STREAM):
        s = socket_in(self.ns[side], family, type)
        self._sockets.append(s)
        return s

    def dest(self, family: int, dev: str = "", port: int = TCP_PORT) -> tuple:
        if family == socket.AF_INET6:
            return (self.ll_b, port, 0, self.ifindex_a)
        return (f"{NET[dev]}.2", port)

    def tcp(self, family: int = socket.AF_INET, dev: str = "") -> socket.socket:
        """A TCP connection from a to b's sink, with a send buffer that never blocks us."""
        s = self._socket("a", family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.settimeout(WAIT_S)
        s.connect(self.dest(family, dev))
        return s

    def udp(self, family: int = socket.AF_INET, gso_size: int = 0) -> socket.socket:
        s = self._socket("a", family, socket.SOCK_DGRAM)
        if gso_size:
            s.setsockopt(SOL_UDP, UDP_SEGMENT, gso_size)
        return s

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in self._sockets:
            s.close()
        if self.pump is not None and self.pump.is_alive():
            self.pump.stop()
        for tap in self.taps.values():
            tap.close()


# ------------------------------------------------------------------------ scenarios


def _is(gso: int, proto: int, vlans: int = 0, **want):
    def pred(f: dict) -> bool:
        return ((f["gso_type"] & ~GSO_ECN) == gso and f["proto"] == proto
                and f["vlans"] == vlans and f["dport"] in (TCP_PORT, UDP_PORT)
                and all(f.get(k) == v for k, v in want.items()))
    return pred


def _bulk_with_fin(wire: Wire, family: int, dev: str, vlans: int, gso: int,
                   name: str, tries: int = 8) -> dict[str, bytes]:
    """A first flight and a FIN-carrying tail, both as super-frames.

    The pump holds the first flight back until the FIN is queued behind the data, so it
    rides on the tail; how the tail is cut depends on ACK timing, so try a few times."""
    pump = wire.pump
    for _ in range(tries):
        s = wire.tcp(family, dev)
        sport = s.getsockname()[1]
        mine = _is(gso, 6, vlans, sport=sport)
        try:
            since = pump.mark()
            pump.hold()
            try:
                s.sendall(os.urandom(MSS4 * 14 + 333))
                s.shutdown(socket.SHUT_WR)
                first = pump.wait_for(lambda f: mine(f) and f["payload"] > 0, since)
                time.sleep(0.02)
            finally:
                pump.release()
            fin = pump.wait_for(lambda f: f["tcp_flags"] & 1 and f["sport"] == sport and
                                f["dport"] == TCP_PORT, since)
        finally:
            s.close()
        if mine(parse(fin)):
            return {name: first, name + "_fin": fin}
    raise CaptureError(f"{name}: the FIN never rode on a super-frame in {tries} tries")


def _ecn(wire: Wire) -> dict[str, bytes]:
    """A CWR super-frame: the pump marks CE on one data frame, the receiver echoes ECE."""
    pump = wire.pump
    s = wire.tcp(socket.AF_INET)
    stop = threading.Event()

    def blast():
        with contextlib.suppress(OSError):
            while not stop.is_set():
                s.sendall(os.urandom(64 << 10))

    t = threading.Thread(target=blast, daemon=True)
    try:
        since = pump.mark()
        pump.mangle = lambda frame: (mark_ce(frame) if parse(frame)["payload"] > 0
                                     else frame)
        t.start()
        mine = _is(GSO_TCPV4, 6, sport=s.getsockname()[1])
        cwr = pump.wait_for(lambda f: mine(f) and f["tcp_flags"] & 0x80, since)
    finally:
        pump.mangle = None
        stop.set()
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)   # wakes the blaster; closing comes after
        t.join(5)
        s.close()
    return {"tcp4_ecn_cwr": cwr}


def _small(wire: Wire) -> dict[str, bytes]:
    """Frames that only ask for a checksum: a short TCP segment, short UDP datagrams."""
    pump, out = wire.pump, {}
    s = wire.tcp(socket.AF_INET)
    try:
        since = pump.mark()
        s.sendall(b"hello, l2vpn")
        mine = _is(GSO_NONE, 6, flags=F_NEEDS_CSUM, sport=s.getsockname()[1])
        out["tcp4_csum"] = pump.wait_for(lambda f: mine(f) and f["payload"] == 12, since)
    finally:
        s.close()
    for family, name in ((socket.AF_INET, "udp4_csum"), (socket.AF_INET6, "udp6_csum")):
        u = wire.udp(family)
        since = pump.mark()
        u.sendto(os.urandom(101), wire.dest(family, port=UDP_PORT))
        mine = _is(GSO_NONE, 17, flags=F_NEEDS_CSUM, sport=u.getsockname()[1])
        out[name] = pump.wait_for(lambda f: mine(f) and f["payload"] == 101, since)
    return out


def _uso(wire: Wire) -> dict[str, bytes]:
    """UDP_SEGMENT sends: one GSO_UDP_L4 super-frame each, the last datagram short."""
    out = {}
    for family, name in ((socket.AF_INET, "udp4_uso"), (socket.AF_INET6, "udp6_uso")):
        u = wire.udp(family, USO_SIZE)
        since = wire.pump.mark()
        u.sendto(os.urandom(USO_SIZE * 4 + 345), wire.dest(family, port=UDP_PORT))
        out[name] = wire.pump.wait_for(_is(GSO_UDP_L4, 17, sport=u.getsockname()[1]), since)
    return out


CAPTURED = ("tcp4_csum", "udp4_csum", "udp6_csum", "tcp4", "tcp4_fin", "tcp6", "tcp6_fin",
            "tcp4_vlan", "tcp4_qinq_fin", "udp4_uso", "udp6_uso", "tcp4_ecn_cwr")


def capture(wire: Wire) -> dict[str, bytes]:
    """The kernel-made cases in CAPTURED, as the vnet-form frames the TAP gave us (the USO
    ones only where the TAP takes USO)."""
    cases: dict[str, bytes] = {}
    devs = ("", ".42", ".q8") if wire.vlans else ("",)
    # Neighbours first, so no case waits on ARP/ND.
    for family, dev in [(socket.AF_INET, d) for d in devs] + [(socket.AF_INET6, "")]:
        wire.tcp(family, dev).close()
    cases.update(_small(wire))
    cases.update(_bulk_with_fin(wire, socket.AF_INET, "", 0, GSO_TCPV4, "tcp4"))
    cases.update(_bulk_with_fin(wire, socket.AF_INET6, "", 0, GSO_TCPV6, "tcp6"))
    if wire.vlans:
        cases["tcp4_vlan"] = _bulk_with_fin(wire, socket.AF_INET, ".42", 1, GSO_TCPV4,
                                            "v")["v"]
        cases["tcp4_qinq_fin"] = _bulk_with_fin(wire, socket.AF_INET, ".q8", 2, GSO_TCPV4,
                                                "q")["q_fin"]
    else:
        # No 802.1Q in this kernel: tag captured frames here (the segmentation is still
        # the kernel's, which handles tags without the 8021q module).
        cases["tcp4_vlan"] = add_vlan_tags(cases["tcp4"], ((0x8100, 42),))
        cases["tcp4_qinq_fin"] = add_vlan_tags(cases["tcp4_fin"], ((0x88A8, 7), (0x8100, 8)))
    if wire.uso:
        cases.update(_uso(wire))
    cases.update(_ecn(wire))
    return {name: cases[name] for name in CAPTURED if name in cases}


# ---------------------------------------------------------------- kernel segmentation


class Segmenter:
    """The kernel's software GSO as a function: write into a vnet TAP, read a plain one."""

    def __init__(self, ns: str):
        self.ns = ns
        self.vnet: Tap | None = None
        self.plain: Tap | None = None
        self.strays: list[bytes] = []
        self._nonce = 0

    def __enter__(self) -> "Segmenter":
        try:
            for knob in ("all", "default"):
                write_sysctl(self.ns, f"net.ipv6.conf.{knob}.disable_ipv6", "1")
            for table in ("arptables", "iptables", "ip6tables"):
                write_sysctl(self.ns, f"net.bridge.bridge-nf-call-{table}", "0",
                             missing_ok=True)
            _ip(self.ns, "link", "add", "br0", "type", "bridge")
            _ip(self.ns, "link", "set", "br0", "up")
            self.vnet = _open_tap(self.ns, "l2sv0", mtu=65000, vnet_hdr=True, bridge="br0")
            self.plain = _open_tap(self.ns, "l2sp0", mtu=65000, vnet_hdr=False, bridge="br0",
                                    txqueuelen=70000)  # room for 64 Ki segments
            if not self.vnet.offloads or self.plain.offloads:
                raise CaptureError("the reference needs one offloading and one plain TAP")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for tap in (self.vnet, self.plain):
            if tap is not None:
                tap.close()

    def segment(self, frame) -> list[bytes] | None:
        """The plain frames the kernel makes of one vnet-form frame; None if it refuses it."""
        self._drain()
        self._nonce += 1
        eth = bytes(frame[VNET_HDR_LEN:VNET_HDR_LEN + 12])
        if len(eth) < 12:
            return None
        marker = eth + struct.pack(">HQ", MARKER_TYPE, self._nonce) + bytes(36)
        refused = False
        try:
            os.write(self.vnet.fd, frame)
        except OSError:
            refused = True
        os.write(self.vnet.fd, PLAIN_HDR + marker)
        got: list[bytes] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaptureError("the marker frame never came through the bridge")
            select.select([self.plain.fd], [], [], left)
            try:
                out = os.read(self.plain.fd, self.plain.read_size)
            except BlockingIOError:
                continue
            if out == marker:
                return None if refused or not got else got
            if out[:12] == eth:    # anything else is not ours (the bridge's own frames)
                got.append(out)
            else:
                self.strays.append(out)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.read(self.plain.fd, self.plain.read_size)


# ------------------------------------------------------------------ synthetic frames


def _csum_fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def _words(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return sum(struct.unpack(f">{len(data) // 2}H", data))


def build(rng: random.Random, *, v6: bool = False, udp: bool = False, vlans=(),
          ip_opts: int = 0, ext_hdrs=(), tcp_opts: int = 12, payload: int = 3000,
          gso_size: int = 1000, tcp_flags: int = 0x18, needs_csum: bool = True,
          seed: str = "full", ecn: bool = False, ip_id: int | None = None,
          len_field: str = "right") -> bytes:
    """A vnet-form super-frame made by hand, for edge cases the stack does not make.

    seed: "full" (pseudo-header sum with the L4 length, as Linux does), "nolen" (without
    it), "random"; len_field: "right" or "wrong" IP/UDP length fields."""
    data = rng.randbytes(payload)
    proto = 17 if udp else 6
    if udp:
        l4 = struct.pack(">HHHH", rng.randrange(1, 65536), UDP_PORT, 8 + payload, 0)
    else:
        opts = (b"\x01" * (tcp_opts % 4) + rng.randbytes(tcp_opts - tcp_opts % 4))
        doff = (20 + len(opts)) // 4
        l4 = struct.pack(">HHIIBBHHH", rng.randrange(1, 65536), TCP_PORT,
                         rng.randrange(1 << 32), rng.randrange(1 << 32), doff << 4,
                         tcp_flags, 502, 0, 0) + opts
    l4_len = len(l4) + payload
    if v6:
        src, dst = b"\xfe\x80" + bytes(6) + rng.randbytes(8), b"\xfe\x80" + bytes(6) + \
            rng.randbytes(8)
        exts, nxt = b"", proto
        for kind in reversed(ext_hdrs):   # 0 hop-by-hop, 60 destination options, 43 routing
            body = bytes([nxt, 0]) + (b"\x01\x04" + bytes(4) if kind != 43
                                      else bytes([0, 0]) + bytes(4))
            exts, nxt = body + exts, kind
        plen = len(exts) + l4_len
        if len_field == "wrong":
            plen = rng.randrange(65536)
        l3 = struct.pack(">IHBB", 0x60000000 | rng.randrange(1 << 20), plen, nxt, 64) + \
            src + dst + exts
        etype = 0x86DD
        pseudo = _words(src + dst) + proto + l4_len
    else:
        opts = bytes([1] * ip_opts)
        ihl = (20 + len(opts)) // 4
        tot = ihl * 4 + l4_len
        if len_field == "wrong":
            tot = rng.randrange(65536)
        ident = rng.randrange(65536) if ip_id is None else ip_id
        src, dst = bytes([198, 18, 77, 1]), bytes([198, 18, 77, 2])
        hdr = bytearray(struct.pack(">BBHHHBBH", 0x40 | ihl, rng.choice([0, 1, 2]), tot,
                                    ident, 0x4000, 64, proto, 0) + src + dst + opts)
        struct.pack_into(">H", hdr, 10, _csum_fold(_words(bytes(hdr))) ^ 0xFFFF)
        l3, etype = bytes(hdr), 0x0800
        pseudo = _words(src + dst) + proto + l4_len
    if seed == "full":
        check = _csum_fold(pseudo)
    elif seed == "nolen":
        check = _csum_fold(pseudo - l4_len)
    else:
        check = rng.randrange(65536)
    l4 = bytearray(l4)
    struct.pack_into(">H", l4, 6 if udp else 16, check)
    if udp and len_field == "wrong":
        struct.pack_into(">H", l4, 4, rng.randrange(65536))
    l2 = bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", ""))
    for tpid, vid in vlans:
        l2 += struct.pack(">HH", tpid, vid)
    eth = l2 + struct.pack(">H", etype) + l3 + bytes(l4) + data
    l4_off = len(l2) + 2 + len(l3)
    gso = GSO_UDP_L4 if udp else (GSO_TCPV6 if v6 else GSO_TCPV4)
    if ecn:
        gso |= GSO_ECN
    flags = F_NEEDS_CSUM if needs_csum else 0
    hdr = _VNET.pack(flags, gso, l4_off + len(l4), gso_size, l4_off if needs_csum else 0,
                     (6 if udp else 16) if needs_csum else 0)
    return hdr + eth


def synthetic_cases(seed: int = 1) -> dict[str, bytes]:
    """Hand-made edge cases (small, deterministic for a seed) the kernel is asked about."""
    rng = random.Random(seed)
    q, ad = 0x8100, 0x88A8
    return {
        "syn_tcp4_options_oddmss": build(rng, ip_opts=8, tcp_opts=20, payload=2500,
                                         gso_size=777, tcp_flags=0x19),
        "syn_tcp4_cwr_ecn_flags": build(rng, tcp_flags=0xD9, ecn=True, payload=2100,
                                        gso_size=700),
        "syn_tcp4_no_needs_csum": build(rng, needs_csum=False, seed="random", payload=2000),
        "syn_tcp4_id_wraps": build(rng, ip_id=0xFFFE, payload=3001, gso_size=1000),
        "syn_tcp4_seed_without_length": build(rng, seed="nolen", payload=2222, gso_size=999),
        "syn_tcp4_random_seed_wrong_totlen": build(rng, seed="random", len_field="wrong"),
        "syn_tcp4_not_really_gso": build(rng, payload=900, gso_size=1000),
        "syn_tcp4_options_push_over": build(rng, tcp_opts=40, payload=990, gso_size=1000),
        "syn_tcp4_options_push_over_no_csum": build(rng, tcp_opts=40, payload=990,
                                                    gso_size=1000, needs_csum=False),
        # Without NEEDS_CSUM tun counts a bare IP header + 20 from the frame start: with
        # 55 bytes, gso_size 15 is "not really GSO" (passed as it is), 14 is GSO (dropped).
        "syn_tcp4_no_csum_not_really_gso": build(rng, needs_csum=False, tcp_opts=0,
                                                 payload=1, gso_size=15),
        "syn_tcp4_no_csum_dropped": build(rng, needs_csum=False, tcp_opts=0, payload=1,
                                          gso_size=14),
        "syn_tcp6_no_csum_not_really_gso": build(rng, v6=True, needs_csum=False, tcp_opts=0,
                                                 payload=1, gso_size=15),
        "syn_tcp6_no_csum_dropped": build(rng, v6=True, needs_csum=False, tcp_opts=0,
                                          payload=1, gso_size=14),
        "syn_tcp6_exthdrs": build(rng, v6=True, ext_hdrs=(0, 43, 60), payload=2600,
                                  gso_size=1100),
        "syn_tcp6_no_needs_csum_qinq": build(rng, v6=True, needs_csum=False, seed="random",
                                             vlans=((ad, 7), (q, 8)), payload=2000),
        "syn_tcp6_tiny_mss": build(rng, v6=True, payload=301, gso_size=48, tcp_flags=0x11),
        "syn_udp4_wrong_len_field": build(rng, udp=True, len_field="wrong", payload=2900,
                                          gso_size=1000),
        "syn_udp4_odd_vlan": build(rng, udp=True, vlans=((q, 5),), payload=2001,
                                   gso_size=333),
        "syn_udp6_exthdr_random_seed": build(rng, udp=True, v6=True, ext_hdrs=(60,),
                                             seed="random", payload=2500, gso_size=1200),
    }


# ----------------------------------------------------------------------------- main


def collect(synthetic: bool = True) -> dict:
    """Capture every case, have the kernel segment it, return the fixture document."""
    with namespaces("a", "b", "seg") as (ns_a, ns_b, ns_seg):
        with Wire(ns_a, ns_b) as wire:
            frames = capture(wire)
            vlans = wire.vlans
        if synthetic:
            frames.update(synthetic_cases())
        cases = {}
        with Segmenter(ns_seg) as seg:
            for name, frame in frames.items():
                plain = seg.segment(frame)
                cases[name] = {"vnet": frame.hex(),
                               "kernel": None if plain is None else [p.hex() for p in plain]}
    return {"kernel": platform.release(), "made_by": "netns-lab/gso_capture.py",
            "vlan_tags_added_by_script": not vlans, "cases": cases}


def main(argv=None) -> int:
    """Write the fixture file (root; about two seconds)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=FIXTURE)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("gso_capture: needs root (namespaces and TAPs)", file=sys.stderr)
        return 2
    doc = collect()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    for name, case in doc["cases"].items():
        f = parse(bytes.fromhex(case["vnet"]))
        print(f"{name:40} {f['len']:6} B flags={f['flags']} gso={f['gso_type']:#04x} "
              f"gso_size={f['gso_size']} hdr_len={f['hdr_len']} csum_start="
              f"{f['csum_start']} -> "
              f"{'dropped' if case['kernel'] is None else len(case['kernel'])} frames")
    print(f"wrote {args.output} (kernel {doc['kernel']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
