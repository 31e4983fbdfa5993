"""A network-namespace lab for l2vpn: topology, PKI, configs and daemon processes.

Theory of operation
-------------------
Every lab lives in namespaces whose names start with one prefix, so a lab never touches the
root namespace's links or routes and can always be swept away by prefix:

    PREFIX-wan      bridge "br-wan" joining one veth per node (the underlay, 198.18.0.0/24)
    PREFIX-hub      eth0 198.18.0.1; the hub daemon; its TAP "l2hub0" 198.19.0.1/24
    PREFIX-site-a   eth0 198.18.0.2; a spoke daemon; TAP "l2vpn0" 198.19.0.2/24, or, when
                    LAN hosts sit behind it, bridge "br-lan" (TAP and a veth to each LAN
                    host as ports) carrying 198.19.0.2/24
    PREFIX-lan-a    eth0 198.19.0.10/24, a plain host on site A's LAN

The PKI is made with the l2vpn CLI (`pki init`, `pki issue`) in the lab's work folder, next
to the YAML configs, the management sockets and one log file per daemon. Daemons run as
`ip netns exec NS python -m l2vpn hub|spoke -c FILE` from the checkout.

Helpers that need to act inside a namespace from this process (raw frames, TCP sockets,
holding a TAP open) switch only the calling thread with setns(2) and switch back in a
`finally`; a socket keeps the namespace it was made in.

Teardown (`Lab.close`, also run by `with`, atexit and the test fixtures) is idempotent:
SIGTERM to every daemon, SIGKILL after a bound, remove the namespaces, delete the work
folder. `cleanup_leftovers(prefix)` sweeps what a crashed run left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import ctypes
import hashlib
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import yaml
from pyroute2 import NetNS, netns

REPO = Path(__file__).resolve().parent.parent
NETNS_DIR = Path("/var/run/netns")
DEMO_PREFIX = "l2lab-"

UNDERLAY_NET = "198.18.0"
OVERLAY_NET = "198.19.0"
PREFIXLEN = 24
HUB_PORT = 7443
HUB_TAP = "l2hub0"
SPOKE_TAP = "l2vpn0"
LAN_BRIDGE = "br-lan"
WAN_BRIDGE = "br-wan"
UPLINK = "eth0"

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
_AUXDATA = struct.Struct("IIIHHHH")
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)


class LabError(RuntimeError):
    """A lab step failed; the message carries what is needed to see why."""


# --------------------------------------------------------------------------- waiting


@dataclass
class Transfer:
    """What one TCP transfer delivered: bytes received, whether the hash matched, time taken."""
    size: int
    received: int
    intact: bool
    seconds: float

    @property
    def mbit_s(self) -> float:
        return self.received * 8 / self.seconds / 1e6 if self.seconds else 0.0


def wait_until(pred: Callable[[], object], timeout_s: float, interval_s: float = 0.05,
               what: str = "condition"):
    """Poll pred() until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while True:
        try:
            value = pred()
        except LabError:
            raise
        except Exception as exc:  # a probe that cannot answer yet counts as "not yet"
            last_exc, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}{detail}")
        time.sleep(interval_s)


# ------------------------------------------------------------------- namespace helpers


def unique_prefix(tag: str = "l2t") -> str:
    """A short namespace-name prefix unique to this process and call, e.g. l2t4242x3-."""
    return f"{tag}{os.getpid()}x{next(_counter)}-"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(ns: str):
    """Run the body with the calling thread inside namespace ns, then switch it back."""
    target = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(orig)
        finally:
            os.close(orig)
    finally:
        os.close(target)


def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket created inside namespace ns (it stays there whatever thread uses it)."""
    with in_netns(ns):
        return socket.socket(family, type, proto)


def run_in(ns: str, argv: list[str], timeout_s: float = 30, check: bool = False,
           **kw) -> subprocess.CompletedProcess:
    """Run argv inside ns via `ip netns exec`, capturing text output."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                          text=True, timeout=timeout_s, check=check, **kw)


def link_info(ns: str, ifname: str) -> dict | None:
    """`ip -j link show` for one link in ns, or None when it does not exist."""
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return None
    data = json.loads(out.stdout or "[]")
    return data[0] if data else None


def link_exists(ns: str, ifname: str) -> bool:
    return link_info(ns, ifname) is not None


def mac_of(ns: str, ifname: str) -> str:
    info = link_info(ns, ifname)
    if info is None:
        raise LabError(f"no link {ifname} in {ns}")
    return info["address"]


def stable_mac(seed: str) -> str:
    """A locally administered unicast MAC derived from seed (stable across runs)."""
    h = hashlib.sha256(seed.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x02]) + h[:5])


def write_sysctl(ns: str, key: str, value: str, missing_ok: bool = False) -> None:
    """Set a per-namespace sysctl (missing_ok: skip one this kernel lacks)."""
    # /proc/sys/net resolves against the opening thread's network namespace.
    with in_netns(ns):
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        except FileNotFoundError:
            if not missing_ok:
                raise


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         timeout=10)
    return [int(p) for p in out.stdout.split()]


def run_tool(argv: list[str], timeout_s: float, tag: str, cwd: Path | None = None):
    """Run a lab tool (bench, stormbench) to its end: (exit code, stdout, stderr, pid).

    The tool names its namespaces f"{tag}{pid}x..." and tears them down on SIGTERM; past
    `timeout_s` it gets SIGTERM, then SIGKILL, what it left is removed and TimeoutError
    says so with its stderr tail."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        cleanup_leftovers(f"{tag}{proc.pid}x")
        raise TimeoutError(f"{Path(argv[1]).name} took over {timeout_s} s; stderr tail:\n"
                           f"{stderr[-3000:]}") from None
    return proc.returncode, stdout, stderr, proc.pid


def rss_kib(pid: int) -> int:
    """A process's resident memory, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LabError(f"no VmRSS for pid {pid}")


def cleanup_leftovers(prefix: str, workdir: Path | None = None) -> list[str]:
    """Kill processes in, and remove, every namespace named prefix*; returns their names."""
    gone = []
    for ns in sorted(netns.listnetns()):
        if not ns.startswith(prefix):
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = ns_pids(ns)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if not pids:
                break
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not ns_pids(ns), 5, what=f"processes in {ns} to exit")
        with contextlib.suppress(Exception):
            netns.remove(ns)
        gone.append(ns)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    return gone


def sweep_dead_runs(tag: str, say=None) -> list[str]:
    """Remove the namespaces of earlier runs (named by unique_prefix(tag)) whose process
    is gone; returns their prefixes."""
    dead = []
    for ns in netns.listnetns():
        m = re.match(rf"^({re.escape(tag)}(\d+)x\d+-)", ns)
        if m and m.group(1) not in dead and not Path(f"/proc/{m.group(2)}").exists():
            dead.append(m.group(1))
    for prefix in dead:
        if say:
            say(f"removing leftovers of a dead run: {prefix}*")
        cleanup_leftovers(prefix)
    return dead


# ------------------------------------------------------------------------ raw frames


@dataclass
class Frame:
    """One frame seen by a Sniffer; data has any VLAN tag the kernel took out put back."""
    data: bytes
    outgoing: bool
    pkttype: int
    vlan_tci: int | None = None
    vlan_tpid: int | None = None
    t: float = 0.0

    @property
    def dst(self) -> str:
        return ":".join(f"{b:02x}" for b in self.data[0:6])

    @property
    def src(self) -> str:
        return ":".join(f"{b:02x}" for b in self.data[6:12])


class Sniffer:
    """An AF_PACKET capture on one interface in a namespace.

    It is capturing once the constructor returns (the socket is bound before anything is
    sent), so create every sniffer first, then send, then collect with wait_for().
    The kernel moves a received 802.1Q tag into metadata; PACKET_AUXDATA brings it back
    and Frame.data carries the tag in place again.
    """

    def __init__(self, ns: str, ifname: str, rcvbuf: int = 8 << 20):
        self.ns, self.ifname = ns, ifname
        self.frames: list[Frame] = []
        self.sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _read_available(self) -> int:
        n = 0
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(65536 + 64,
                                                            socket.CMSG_SPACE(_AUXDATA.size))
            except (BlockingIOError, InterruptedError):
                return n
            tci = tpid = None
            for level, ctype, cdata in anc:
                if level == SOL_PACKET and ctype == PACKET_AUXDATA and len(cdata) >= _AUXDATA.size:
                    status, _len, _snap, _mac, _net, a_tci, a_tpid = _AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID:
                        tci = a_tci
                        tpid = a_tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
            if tci is not None and len(data) >= 12:
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
            self.frames.append(Frame(data, addr[2] == PACKET_OUTGOING, addr[2], tci, tpid,
                                     time.monotonic()))
            n += 1

    def poll(self, timeout_s: float = 0.0) -> None:
        """Take in what arrives within timeout_s (at least what is queued now)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._read_available()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([self.sock], [], [], left)

    def matching(self, pred: Callable[[Frame], bool], incoming_only: bool = True) -> list[Frame]:
        self._read_available()
        return [f for f in self.frames if (not incoming_only or not f.outgoing) and pred(f)]

    def wait_for(self, pred: Callable[[Frame], bool], count: int = 1, timeout_s: float = 5.0,
                 incoming_only: bool = True) -> list[Frame]:
        """Frames matching pred once at least count have arrived; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.matching(pred, incoming_only)
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.ns}/{self.ifname}: saw {len(found)} of {count} expected frames "
                    f"within {timeout_s}s ({len(self.frames)} frames captured in all)")
            select.select([self.sock], [], [], min(left, 0.2))


def send_frame(ns: str, ifname: str, frame: bytes | Iterable[bytes]) -> None:
    """Send raw Ethernet frame(s) out of ifname in ns (into a TAP: to its daemon)."""
    frames = [frame] if isinstance(frame, (bytes, bytearray, memoryview)) else list(frame)
    with contextlib.closing(socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0)) as s:
        s.bind((ifname, 0))
        for f in frames:
            s.send(bytes(f))


def has_marker(marker: bytes) -> Callable[[Frame], bool]:
    return lambda f: marker in f.data


# ----------------------------------------------------------------------------- ping


@dataclass
class PingResult:
    transmitted: int
    received: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None
    output: str

    @property
    def loss_pct(self) -> float:
        return 100.0 * (1 - self.received / self.transmitted) if self.transmitted else 100.0

    @property
    def ok(self) -> bool:
        return self.transmitted > 0 and self.received == self.transmitted

    def __str__(self) -> str:
        rtt = f"rtt avg {self.rtt_avg_ms:.3f} ms" if self.rtt_avg_ms is not None else "no rtt"
        return f"{self.received}/{self.transmitted} received, {self.loss_pct:.0f}% loss, {rtt}"


_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/")


def ping(ns: str, addr: str, count: int = 3, interval_s: float = 0.2,
         wait_s: float = 2.0) -> PingResult:
    """ping addr from ns; never raises on loss (check .ok)."""
    out = run_in(ns, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval_s),
                      "-W", str(wait_s), addr],
                 timeout_s=count * (interval_s + wait_s) + 10)
    text = out.stdout + out.stderr
    m = _PING_COUNTS.search(text)
    r = _PING_RTT.search(text)
    return PingResult(int(m.group(1)) if m else 0, int(m.group(2)) if m else 0,
                      float(r.group(1)) if r else None, float(r.group(2)) if r else None,
                      float(r.group(3)) if r else None, text)


# ------------------------------------------------------------------------- the lab


@dataclass
class Node:
    """A daemon node (hub or spoke) and its namespace, files and process."""
    name: str
    role: str
    ns: str
    underlay_ip: str
    overlay_ip: str | None
    tap: str | None
    overlay_if: str | None          # the link carrying overlay_ip (TAP or br-lan)
    config: Path
    socket: Path
    log: Path
    lan_hosts: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    starts: int = 0


@dataclass
class LanHost:
    name: str
    ns: str
    ip: str
    behind: str
    ifname: str = UPLINK


def add_veth(ipr, ifname: str, peer: str, peer_ns: str) -> None:
    """A veth pair: `ifname` where `ipr` works, `peer` made in namespace `peer_ns`
    (passed as a descriptor held for the length of the request)."""
    fd = os.open(NETNS_DIR / peer_ns, os.O_RDONLY)
    try:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
    finally:
        os.close(fd)


def _moved_link(ipr, ifname: str, ns: str) -> int:
    """The index of a veth end just moved into ns. Waited for, bounded, and on time-out
    every namespace's links are listed: a veth that never arrives has meant a namespace
    torn down under the build (see _unwind_on_signal)."""
    try:
        return wait_until(lambda: (ipr.link_lookup(ifname=ifname) or [None])[0], 10,
                          what=f"{ifname} to appear in {ns}")
    except TimeoutError as e:
        seen = {n: subprocess.run(["ip", "-br", "link"] if n == "root" else
                                  ["ip", "-n", n, "-br", "link"], capture_output=True,
                                  text=True).stdout.split("\n")
                for n in ["root", *netns.listnetns()]}
        raise TimeoutError(f"{e}; links: {seen}; pyroute2 sees "
                           f"{[l.get_attr('IFLA_IFNAME') for l in ipr.get_links()]}") from None


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def tcp_transfer(src_ns: str, dst_ns: str, dst_addr: str, size: int,
                 family: int = socket.AF_INET, timeout_s: float = 60) -> Transfer:
    """Send `size` random bytes over one TCP connection from src_ns to dst_addr in dst_ns;
    the receiver hashes what arrives. Raises LabError if the receiver fails or hangs."""
    payload = os.urandom(size)
    want = hashlib.sha256(payload).digest()
    srv = socket_in(dst_ns, family)
    cli = socket_in(src_ns, family)
    result: dict = {}
    try:
        srv.bind((dst_addr, 0))
        srv.listen(1)
        srv.settimeout(timeout_s)
        addr = srv.getsockname()

        def receive():
            try:
                conn, _ = srv.accept()
                conn.settimeout(timeout_s)
                h, n = hashlib.sha256(), 0
                with conn:
                    while chunk := conn.recv(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                result.update(n=n, sha=h.digest())
            except Exception as exc:   # reported below
                result["error"] = exc

        t = threading.Thread(target=receive, daemon=True)
        t.start()
        cli.settimeout(timeout_s)
        t0 = time.monotonic()
        cli.connect(addr)
        cli.sendall(payload)
        cli.shutdown(socket.SHUT_WR)
        t.join(timeout_s)
        took = time.monotonic() - t0
    finally:
        cli.close()
        srv.close()
    if t.is_alive():
        raise LabError(f"TCP receiver at {dst_addr} still running after {timeout_s:g} s")
    if "error" in result:
        raise LabError(f"TCP receiver at {dst_addr} failed: {result['error']!r}")
    return Transfer(size, result["n"], result["sha"] == want and result["n"] == size, took)


class Lab:
    """A hub, N spokes and optional LAN hosts in namespaces, with PKI and configs.

    Typical use:
        with Lab(spokes=["site-a", "site-b"], lan={"site-a": ["lan-a"]}) as lab:
            lab.start_all(); lab.wait_sessions()
            print(lab.ping(lab.ns("site-a"), lab.ip("site-b")))
    """

    def __init__(self, spokes: Iterable[str] = ("site-a", "site-b"),
                 lan: dict[str, list[str]] | None = None, prefix: str | None = None,
                 hub_tap: bool = True, port: int = HUB_PORT,
                 keepalive: tuple[float, float] = (5, 20),
                 reconnect: tuple[float, float] = (1, 2), aging_s: float = 300,
                 workdir: str | Path | None = None, verbose: bool = True,
                 ipv6: bool = False, pki: bool = True, python: str = sys.executable,
                 src: str | Path | None = None, say: Callable[[str], None] | None = None,
                 offload: bool | dict = True):
        self.prefix = prefix or unique_prefix()
        self.spoke_names = list(spokes)
        self.lan = {k: list(v) for k, v in (lan or {}).items()}
        unknown = set(self.lan) - set(self.spoke_names)
        if unknown:
            raise ValueError(f"LAN hosts behind unknown spokes: {sorted(unknown)}")
        self.hub_tap, self.port, self.keepalive = hub_tap, port, keepalive
        self.reconnect, self.aging_s, self.verbose = reconnect, aging_s, verbose
        self.ipv6, self.make_pki, self.python = ipv6, pki, python
        # the l2vpn checkout the daemons run from (L2VPN_SRC: compare another build)
        self.src = Path(src or os.environ.get("L2VPN_SRC") or REPO).resolve()
        self.say = say or (lambda msg: None)
        # True/False for every node, or {name: bool | {"tap": bool, "session": bool}}
        self.offload = offload
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=self.prefix))
        self.pki_dir = self.workdir / "pki"
        self.wan_ns = self.prefix + "wan"
        self.nodes: dict[str, Node] = {}
        self.lan_hosts: dict[str, LanHost] = {}
        self.namespaces: list[str] = []
        self._closed = False
        self._built = False
        self._owner_pid = os.getpid()
        self._atexit = atexit.register(self.close)
        self._plan()

    # ---------------------------------------------------------------- plan and build

    def _plan(self) -> None:
        run = self.workdir / "run"
        logs = self.workdir / "logs"
        self.nodes["hub"] = Node(
            "hub", "hub", self.prefix + "hub", f"{UNDERLAY_NET}.1",
            f"{OVERLAY_NET}.1" if self.hub_tap else None, HUB_TAP if self.hub_tap else None,
            HUB_TAP if self.hub_tap else None, self.workdir / "hub.yaml", run / "hub.sock",
            logs / "hub.log")
        lan_ip = itertools.count(10)
        for i, name in enumerate(self.spoke_names, start=2):
            if name == "hub" or name in self.nodes:
                raise ValueError(f"bad or repeated node name {name!r}")
            hosts = self.lan.get(name, [])
            self.nodes[name] = Node(
                name, "spoke", self.prefix + name, f"{UNDERLAY_NET}.{i}", f"{OVERLAY_NET}.{i}",
                SPOKE_TAP, LAN_BRIDGE if hosts else SPOKE_TAP, self.workdir / f"{name}.yaml",
                run / f"{name}.sock", logs / f"{name}.log", lan_hosts=hosts)
            for h in hosts:
                self.lan_hosts[h] = LanHost(h, self.prefix + h, f"{OVERLAY_NET}.{next(lan_ip)}",
                                            name)

    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> "Lab":
        """Create namespaces and links, then the PKI and configs."""
        if self._built:
            return self
        self._built = True
        for d in ("run", "logs"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self.say(f"building namespaces {self.prefix}* (work folder {self.workdir})")
        all_ns = [self.wan_ns] + [n.ns for n in self.nodes.values()] + \
                 [h.ns for h in self.lan_hosts.values()]
        for ns in all_ns:
            if (NETNS_DIR / ns).exists():
                raise LabError(f"namespace {ns} already exists (run cleanup_leftovers)")
            netns.create(ns)
            self.namespaces.append(ns)
            if not self.ipv6:
                # keep IPv6 chatter (RS, MLD, DAD) off the wire; set before links exist
                write_sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
                write_sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        for ns in all_ns:
            with NetNS(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with NetNS(self.wan_ns) as wan:
            wan.link("add", ifname=WAN_BRIDGE, kind="bridge", br_mcast_snooping=0)
            br = wan.link_lookup(ifname=WAN_BRIDGE)[0]
            wan.link("set", index=br, state="up")
            for node in self.nodes.values():
                port = f"w-{node.name}"[:15]
                add_veth(wan, port, UPLINK, node.ns)
                idx = wan.link_lookup(ifname=port)[0]
                wan.link("set", index=idx, master=br, state="up")
        for node in self.nodes.values():
            with NetNS(node.ns) as ipr:
                idx = _moved_link(ipr, UPLINK, node.ns)
                ipr.addr("add", index=idx, address=node.underlay_ip, prefixlen=PREFIXLEN)
                ipr.link("set", index=idx, state="up")
                if node.lan_hosts:
                    ipr.link("add", ifname=LAN_BRIDGE, kind="bridge", br_mcast_snooping=0,
                             address=stable_mac(f"{node.name}/{LAN_BRIDGE}"))
                    br = ipr.link_lookup(ifname=LAN_BRIDGE)[0]
                    ipr.addr("add", index=br, address=node.overlay_ip, prefixlen=PREFIXLEN)
                    ipr.link("set", index=br, state="up")
                    for j, h in enumerate(node.lan_hosts):
                        host = self.lan_hosts[h]
                        port = f"lan{j}"
                        add_veth(ipr, port, host.ifname, host.ns)
                        pidx = ipr.link_lookup(ifname=port)[0]
                        ipr.link("set", index=pidx, master=br, state="up")
        for host in self.lan_hosts.values():
            with NetNS(host.ns) as ipr:
                idx = _moved_link(ipr, host.ifname, host.ns)
                ipr.addr("add", index=idx, address=host.ip, prefixlen=PREFIXLEN)
                ipr.link("set", index=idx, state="up")
        if self.make_pki:
            self._make_pki()
            for name in self.nodes:
                self.write_config(name, self.default_config(name))
        return self

    def l2vpn(self, *args: str, ns: str | None = None, timeout_s: float = 60,
              check: bool = False) -> subprocess.CompletedProcess:
        """Run the l2vpn CLI from the checkout (inside ns if given)."""
        argv = [self.python, "-m", "l2vpn", *args]
        if ns:
            argv = ["ip", "netns", "exec", ns, *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                             cwd=self.src, env=self._env())
        if check and out.returncode != 0:
            raise LabError(f"`l2vpn {' '.join(args)}` exited {out.returncode}:\n"
                           f"{out.stdout}{out.stderr}")
        return out

    def _env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.src) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _make_pki(self) -> None:
        self.say("making the PKI with `l2vpn pki`")
        d = str(self.pki_dir)
        self.l2vpn("pki", "init", d, check=True)
        hub = self.nodes["hub"]
        self.l2vpn("pki", "issue", d, "hub", "--role", "hub", "--ip", hub.underlay_ip,
                   "--dns", "hub", check=True)
        for name in self.spoke_names:
            self.l2vpn("pki", "issue", d, name, "--role", "spoke", check=True)

    def foreign_pki(self, name: str, role: str = "spoke", folder: str = "foreign-pki") -> Path:
        """Issue name's certificate from a second, unrelated CA; returns that folder."""
        d = self.workdir / folder
        if not (d / "ca.crt").exists():
            self.l2vpn("pki", "init", str(d), check=True)
        self.l2vpn("pki", "issue", str(d), name, "--role", role, check=True)
        return d

    def offload_of(self, name: str) -> dict:
        """{"tap": bool, "session": bool}: whether name's TAP and sessions use offloads."""
        choice = self.offload.get(name, True) if isinstance(self.offload, dict) else self.offload
        if isinstance(choice, dict):
            return {"tap": choice.get("tap", True), "session": choice.get("session", True)}
        return {"tap": bool(choice), "session": bool(choice)}

    def default_config(self, name: str) -> dict:
        node = self.nodes[name]
        off = self.offload_of(name)
        rel = os.path.relpath(self.pki_dir, node.config.parent)
        tls = {"ca": f"{rel}/ca.crt", "cert": f"{rel}/{name}.crt", "key": f"{rel}/{name}.key"}
        keepalive = {"interval_s": self.keepalive[0], "timeout_s": self.keepalive[1]}
        mgmt = {"socket": str(node.socket)}
        if node.role == "hub":
            cfg = {"node": "hub", "listen": {"address": "0.0.0.0", "port": self.port,
                                             "offload": off["session"]},
                   "tls": tls, "switch": {"aging_s": self.aging_s}, "management": mgmt,
                   "keepalive": keepalive}
            if node.tap:
                cfg["tap"] = {"name": node.tap, "mtu": 1500, "offload": off["tap"],
                              "address": f"{node.overlay_ip}/{PREFIXLEN}"}
            return cfg
        tap = {"name": node.tap, "mtu": 1500, "offload": off["tap"]}
        if node.lan_hosts:
            tap["bridge"] = LAN_BRIDGE    # the lab put the overlay address on br-lan
        else:
            tap["address"] = f"{node.overlay_ip}/{PREFIXLEN}"
        return {"node": name,
                "hub": {"address": self.nodes["hub"].underlay_ip, "port": self.port,
                        "server_name": "hub", "offload": off["session"]},
                "tls": tls, "tap": tap, "management": mgmt,
                "reconnect": {"initial_s": self.reconnect[0], "max_s": self.reconnect[1]},
                "keepalive": keepalive}

    def config(self, name: str) -> dict:
        return yaml.safe_load(self.nodes[name].config.read_text())

    def write_config(self, name: str, cfg: dict, path: Path | None = None) -> Path:
        path = path or self.nodes[name].config
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def update_config(self, name: str, changes: dict, path: Path | None = None) -> Path:
        """Deep-merge changes into name's config (None deletes a key); write to path."""
        return self.write_config(name, _deep_merge(self.config(name), changes), path)

    # ----------------------------------------------------------------- addressing

    def ns(self, name: str) -> str:
        """The namespace of a node or LAN host."""
        if name in self.nodes:
            return self.nodes[name].ns
        return self.lan_hosts[name].ns

    def ip(self, name: str) -> str:
        """The overlay address of a node or LAN host."""
        if name in self.nodes:
            ip = self.nodes[name].overlay_ip
            if ip is None:
                raise LabError(f"{name} has no overlay address")
            return ip
        return self.lan_hosts[name].ip

    def overlay_if(self, name: str) -> str:
        """The link that carries name's overlay address (TAP, br-lan or a LAN host's eth0)."""
        if name in self.nodes:
            return self.nodes[name].overlay_if
        return self.lan_hosts[name].ifname

    def tap_mac(self, name: str) -> str:
        node = self.nodes[name]
        return mac_of(node.ns, node.tap)

    def mac(self, name: str) -> str:
        """The MAC that answers ARP for name's overlay address."""
        return mac_of(self.ns(name), self.overlay_if(name))

    # ------------------------------------------------------------------ processes

    def start(self, name: str, extra_args: Iterable[str] = (), config: Path | None = None
              ) -> subprocess.Popen:
        """Start a daemon in its namespace; stdout+stderr append to its log file."""
        node = self.nodes[name]
        if node.proc and node.proc.poll() is None:
            raise LabError(f"{name} is already running (pid {node.proc.pid})")
        node.starts += 1
        argv = ["ip", "netns", "exec", node.ns, self.python, "-m", "l2vpn", node.role,
                "-c", str(config or node.config), *(["-v"] if self.verbose else []),
                *extra_args]
        with open(node.log, "ab") as log:
            log.write(f"===== lab: start #{node.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.src, env=self._env(),
                                         start_new_session=True)
        return node.proc

    def start_all(self) -> None:
        self.start("hub")
        self.wait_ready("hub")
        for name in self.spoke_names:
            self.start(name)

    def running(self, name: str) -> bool:
        p = self.nodes[name].proc
        return p is not None and p.poll() is None

    def daemon_pid(self, name: str) -> int:
        """The pid of the one l2vpn process in name's namespace, found in /proc (not an
        `ip netns exec` wrapper, whatever the daemon did since it started)."""
        pids = []
        for pid in ns_pids(self.ns(name)):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except FileNotFoundError:
                continue
            if any(a == b"-m" and b == b"l2vpn" for a, b in zip(argv, argv[1:])):
                pids.append(pid)
        if len(pids) != 1:
            raise LabError(f"l2vpn processes in {self.ns(name)}: {pids}")
        return pids[0]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 10) -> int | None:
        """Signal a daemon and wait (SIGKILL after timeout_s); returns its exit code."""
        p = self.nodes[name].proc
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                self._note(name, f"did not exit within {timeout_s}s of signal {sig}; killed")
        return p.returncode

    def kill(self, name: str) -> int | None:
        """kill -9 a daemon and reap it."""
        return self.stop(name, signal.SIGKILL, timeout_s=10)

    def restart(self, name: str) -> subprocess.Popen:
        self.stop(name)
        return self.start(name)

    def _note(self, name: str, text: str) -> None:
        with open(self.nodes[name].log, "ab") as log:
            log.write(f"===== lab: {text}\n".encode())

    def log(self, name: str, since_start: bool = False) -> str:
        """A daemon's log (stdout+stderr); since_start keeps only the latest run."""
        path = self.nodes[name].log
        text = path.read_text(errors="replace") if path.exists() else ""
        if since_start:
            idx = text.rfind("===== lab: start #")
            text = text[idx:] if idx >= 0 else text
        return text

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def _check_alive(self, names: Iterable[str]) -> None:
        for name in names:
            node = self.nodes[name]
            if node.proc is not None and node.proc.poll() is not None:
                raise LabError(f"{name} exited with {node.proc.returncode}; log tail:\n"
                               f"{self.log_tail(name)}")

    # ------------------------------------------------------------------- status

    def status(self, name: str, timeout_s: float = 10) -> dict:
        """`l2vpn status --json` of a daemon (from the root namespace: sockets are paths)."""
        out = self.l2vpn("status", "-s", str(self.nodes[name].socket), "--json",
                         timeout_s=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"status of {name} exited {out.returncode}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def wait_until(self, pred: Callable[[], object], timeout_s: float = 10,
                   what: str = "condition", alive: Iterable[str] | None = None):
        """wait_until that also fails fast (with the log) if a daemon in alive dies."""
        watch = list(alive) if alive is not None else []

        def probe():
            self._check_alive(watch)
            return pred()
        try:
            return wait_until(probe, timeout_s, interval_s=0.1, what=what)
        except TimeoutError as exc:
            tails = "".join(f"\n--- {n} log tail ---\n{self.log_tail(n)}" for n in watch)
            raise TimeoutError(f"{exc}{tails}") from None

    def wait_ready(self, name: str, timeout_s: float = 30) -> dict:
        """Until the daemon answers status."""
        return self.wait_until(lambda: self.status(name), timeout_s,
                               what=f"{name} to answer status", alive=[name])

    def sessions(self, name: str = "hub") -> dict[str, dict]:
        """name's sessions that are up, by peer node name."""
        return {s["node"]: s for s in self.status(name)["sessions"] if s.get("state") == "up"}

    def wait_sessions(self, n: int | None = None, spokes: Iterable[str] | None = None,
                      timeout_s: float = 30) -> dict[str, dict]:
        """Until the hub has exactly the given spokes' sessions up (default: all running
        spokes, or n sessions) and each of those spokes reports its hub session up."""
        names = list(spokes) if spokes is not None else \
            [s for s in self.spoke_names if self.running(s)]

        def done():
            sess = self.sessions("hub")
            if n is not None and len(sess) != n:
                return None
            if n is None and set(sess) != set(names):
                return None
            for s in names:
                if "hub" not in self.sessions(s):
                    return None
            return sess
        return self.wait_until(done, timeout_s, what=f"sessions up ({n if n is not None else names})",
                               alive=["hub", *names])

    # ----------------------------------------------------------- tools in namespaces

    def exec(self, ns: str, argv: list[str], timeout_s: float = 30,
             check: bool = False) -> subprocess.CompletedProcess:
        return run_in(ns, argv, timeout_s=timeout_s, check=check)

    def ping(self, ns: str, addr: str, count: int = 3, interval_s: float = 0.2,
             wait_s: float = 2.0) -> PingResult:
        return ping(ns, addr, count, interval_s, wait_s)

    def wait_ping(self, ns: str, addr: str, timeout_s: float = 20) -> PingResult:
        """Until one ping from ns to addr is answered (ARP settles on the way)."""
        def once():
            r = ping(ns, addr, count=1, wait_s=1)
            return r if r.ok else None
        return self.wait_until(once, timeout_s, what=f"ping {addr} from {ns}",
                               alive=[n for n in self.nodes if self.running(n)])

    def socket_in(self, ns: str, family: int = socket.AF_INET,
                  type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        return socket_in(ns, family, type, proto)

    def tcp_transfer(self, src: str, dst: str, size: int, timeout_s: float = 60) -> Transfer:
        """A TCP transfer between two nodes' or LAN hosts' overlay addresses."""
        return tcp_transfer(self.ns(src), self.ns(dst), self.ip(dst), size,
                            timeout_s=timeout_s)

    def sniff(self, name: str, ifname: str | None = None) -> Sniffer:
        """A Sniffer on name's overlay link (or ifname) in name's namespace."""
        return Sniffer(self.ns(name), ifname or self.overlay_if(name))

    def send_frame(self, ns: str, ifname: str, frame) -> None:
        send_frame(ns, ifname, frame)

    # ------------------------------------------------------------------- teardown

    def close(self) -> None:
        """Stop daemons, remove namespaces and the work folder; safe to call twice. A
        forked copy of the process that made the lab (a library's helper child that
        escaped into our code) never tears it down."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        procs = [(n, n.proc) for n in self.nodes.values()
                 if n.proc is not None and n.proc.poll() is None]
        for _, p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        deadline = time.monotonic() + 5
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        for ns in reversed(self.namespaces):
            for pid in ns_pids(ns) if (NETNS_DIR / ns).exists() else []:
                # stray children the lab started in its own namespaces
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                netns.remove(ns)
        self.namespaces.clear()
        if not os.environ.get("L2VPN_LAB_KEEP_WORKDIR"):     # set it to keep logs and PKI
            shutil.rmtree(self.workdir, ignore_errors=True)


_handler_pid = 0


def _unwind_on_signal(signum, frame):
    # pyroute2 forks a child for every NetNS socket and SIGTERMs it once it has answered;
    # the child inherits this handler. Unwinding there would run the parent's code and
    # atexit handlers in the child (it once tore down the lab under the parent's feet),
    # so a process this was not installed in leaves at once.
    if os.getpid() != _handler_pid:
        os._exit(128 + signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind (and SIGINT raise KeyboardInterrupt even when the script was
    started with it ignored) so `with Lab()` tears down; for scripts. Only in the process
    that called it: a forked copy just exits."""
    global _handler_pid
    if threading.current_thread() is threading.main_thread():
        _handler_pid = os.getpid()
        signal.signal(signal.SIGTERM, _unwind_on_signal)
        signal.signal(signal.SIGINT, _unwind_on_signal)
