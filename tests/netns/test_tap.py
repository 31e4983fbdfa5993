"""Real TAPs, each test inside its own network namespace (root only).

The `ns` fixture moves pytest's main thread into a fresh namespace with IPv6 off (so the
kernel sends no ND/MLD noise through the TAP) and always moves it back and removes the
namespace. Sockets and TAPs opened meanwhile stay in that namespace.
"""

import ipaddress
import itertools
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from pyroute2 import IPRoute, netns
from scapy.layers.l2 import ARP, Ether

from l2vpn import tap as tapmod
from l2vpn.errors import DeviceError
from l2vpn.offload import VNET_HDR_LEN
from l2vpn.tap import Tap, derive_mac

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and TAPs"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
IFF_UP = 0x1
WAIT_S = 5.0
_serial = itertools.count()


def _netns_id() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def ns():
    """A fresh namespace that this (main) thread works in for the test."""
    assert threading.current_thread() is threading.main_thread()
    name = f"l2t-tap-{os.getpid()}-{next(_serial)}"
    home = _netns_id()
    netns.create(name)
    try:
        netns.pushns()
        try:
            netns.setns(name, flags=0)
            assert _netns_id() != home
            for knob in ("all", "default"):
                with open(f"/proc/sys/net/ipv6/conf/{knob}/disable_ipv6", "w") as f:
                    f.write("1")
            yield name
        finally:
            netns.popns()
            assert _netns_id() == home, "failed to return to the original namespace"
    finally:
        netns.remove(name)


@pytest.fixture
def ipr(ns):
    with IPRoute() as ipr:
        yield ipr


@pytest.fixture
def bridge(ipr):
    ipr.link("add", ifname="l2tbr", kind="bridge")
    index = ipr.link_lookup(ifname="l2tbr")[0]
    ipr.link("set", index=index, state="up")
    return index


def _link(ipr, name):
    indexes = ipr.link_lookup(ifname=name)
    return ipr.get_links(indexes[0])[0] if indexes else None


def _addrs(ipr, index):
    return {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index)}


def _arp(src="02:00:00:00:00:02", psrc="198.18.0.2", pdst="198.18.0.1") -> bytes:
    return bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=src, type=0x0806)
        / ARP(op=1, hwsrc=src, psrc=psrc, hwdst="00:00:00:00:00:00", pdst=pdst)
    )


def _packet_socket(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    return sock


def _recv_until(sock, want: bytes):
    """The (frame, address) the socket receives equal to want, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(65536)
        except socket.timeout:
            break
        if data == want:
            return data, addr
    pytest.fail(f"frame not seen on the interface within {WAIT_S} s")


def _read_until(tap, want_tail: bytes) -> bytes:
    """The first read from the TAP fd that ends with want_tail, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([tap.fd], [], [], left)
        if not ready:
            break
        data = os.read(tap.fd, tap.read_size)
        if data.endswith(want_tail):
            return data
    pytest.fail(f"frame not read from the TAP within {WAIT_S} s")


def _open_fails(**kwargs) -> str:
    with pytest.raises(DeviceError) as err:
        Tap.open(**kwargs).close()
    message = str(err.value)
    assert "\n" not in message
    return message


# --- derive_mac -------------------------------------------------------------------

def test_derive_mac_is_stable_local_unicast():
    mac = derive_mac("site-a", "l2vpn0")
    assert mac == derive_mac("site-a", "l2vpn0")
    assert len(mac) == 6
    assert mac[0] & 0x02 and not mac[0] & 0x01
    assert mac != derive_mac("site-b", "l2vpn0")
    assert mac != derive_mac("site-a", "l2vpn1")


def test_derive_mac_bits_hold_for_many_names():
    for n in range(256):
        mac = derive_mac(f"node{n}", "tap")
        assert mac[0] & 0x03 == 0x02


# --- link setup -------------------------------------------------------------------

def test_open_sets_name_mtu_mac_txqueuelen_state_and_address(ipr):
    mac = derive_mac("site-a", "l2t0")
    address = ipaddress.ip_interface("198.18.0.1/24")
    with Tap.open("l2t0", mtu=1400, mac=mac, address=address, txqueuelen=500) as tap:
        link = _link(ipr, "l2t0")
        assert link is not None
        assert tap.index == link["index"]
        assert link.get("mtu") == 1400 == tap.mtu
        assert link.get("address") == ":".join(f"{b:02x}" for b in mac)
        assert tap.mac == mac
        assert link.get("txqlen") == 500
        assert link["flags"] & IFF_UP
        assert link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"
        assert _addrs(ipr, tap.index) == {("198.18.0.1", 24)}
        assert not os.get_blocking(tap.fd)
        assert os.get_inheritable(tap.fd) is False
        assert tap.vnet_hdr is False and tap.offloads == 0


def test_open_without_mac_reports_the_kernels_mac(ipr):
    with Tap.open("l2t0") as tap:
        assert tap.mac.hex(":") == _link(ipr, "l2t0").get("address")
        assert len(tap.mac) == 6 and not tap.mac[0] & 1


def test_close_removes_the_link_and_is_idempotent(ipr):
    tap = Tap.open("l2t0")
    assert _link(ipr, "l2t0") is not None
    tap.close()
    assert _link(ipr, "l2t0") is None
    assert tap.fd == -1
    tap.close()


# --- the data path ----------------------------------------------------------------

def test_frame_written_to_the_tap_appears_on_the_interface(ns):
    frame = _arp()
    with Tap.open("l2t0") as tap, _packet_socket("l2t0") as sock:
        assert os.write(tap.fd, frame) == len(frame)
        data, addr = _recv_until(sock, frame)
        assert data == frame
        assert addr[0] == "l2t0" and addr[2] != PACKET_OUTGOING


def test_frame_sent_on_the_interface_is_read_from_the_fd(ns):
    frame = _arp(psrc="198.18.0.7", pdst="198.18.0.9")
    with Tap.open("l2t0") as tap, _packet_socket("l2t0") as sock:
        sock.send(frame)
        assert _read_until(tap, frame) == frame


def test_read_on_an_empty_tap_raises_blockingioerror(ns):
    with Tap.open("l2t0") as tap:
        with pytest.raises(BlockingIOError):
            os.read(tap.fd, tap.read_size)          # as TapPort reads it


def test_vnet_hdr_prefixes_reads_and_offloads_are_accepted(ns):
    frame = _arp(psrc="198.18.0.4")
    with Tap.open("l2t0", vnet_hdr=True) as tap, _packet_socket("l2t0") as sock:
        assert tap.vnet_hdr
        assert tap.offloads & tapmod.TUN_F_CSUM
        assert tap.offloads & tapmod.TUN_F_TSO4  # this kernel takes TSO (LAB-NOTES)
        assert tap.read_size >= VNET_HDR_LEN + 65536
        sock.send(frame)
        data = _read_until(tap, frame)
        assert len(data) == VNET_HDR_LEN + len(frame)
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack(
            "<BBHHHH", data[:VNET_HDR_LEN]
        )
        assert (flags, gso_type, gso_size) == (0, 0, 0)  # no checksum to do, no GSO
        assert data[VNET_HDR_LEN:] == frame


def test_vnet_hdr_write_takes_a_header_then_the_frame(ns):
    frame = _arp(psrc="198.18.0.5")
    with Tap.open("l2t0", vnet_hdr=True) as tap, _packet_socket("l2t0") as sock:
        assert os.write(tap.fd, bytes(VNET_HDR_LEN) + frame) == VNET_HDR_LEN + len(frame)
        data, _ = _recv_until(sock, frame)
        assert data == frame


# --- bridges ----------------------------------------------------------------------

def test_bridge_port_is_enslaved_and_the_address_goes_on_the_bridge(ipr, bridge):
    with Tap.open("l2t0", address="198.18.0.1/24", bridge="l2tbr") as tap:
        assert _link(ipr, "l2t0").get("master") == bridge
        assert _addrs(ipr, bridge) == {("198.18.0.1", 24)}
        assert _addrs(ipr, tap.index) == set()
    assert _link(ipr, "l2t0") is None
    assert _addrs(ipr, bridge) == set()
    assert _link(ipr, "l2tbr") is not None


def test_an_address_the_bridge_already_had_stays_after_close(ipr, bridge):
    ipr.addr("add", index=bridge, address="198.18.0.1", prefixlen=24)
    with Tap.open("l2t0", address="198.18.0.1/24", bridge="l2tbr"):
        assert _addrs(ipr, bridge) == {("198.18.0.1", 24)}
    assert _addrs(ipr, bridge) == {("198.18.0.1", 24)}


def test_frames_cross_the_bridge_between_two_taps(ns, bridge):
    frame = _arp(psrc="198.18.0.6")
    with Tap.open("l2t0", bridge="l2tbr") as a, Tap.open("l2t1", bridge="l2tbr") as b:
        os.write(a.fd, frame)
        assert _read_until(b, frame) == frame


# --- errors -----------------------------------------------------------------------

def test_a_name_in_use_is_refused_and_the_old_link_stays(ipr):
    with Tap.open("l2t0") as first:
        message = _open_fails(name="l2t0")
        assert message == "interface l2t0 already exists: choose another tap.name or delete it"
        link = _link(ipr, "l2t0")
        assert link is not None and link["index"] == first.index


def test_tunsetiff_refuses_an_existing_tap_even_past_the_precheck(ipr, monkeypatch):
    """IFF_TUN_EXCL closes the race between the name check and TUNSETIFF."""
    with Tap.open("l2t0") as first:
        monkeypatch.setattr(Tap, "_precheck", staticmethod(lambda ipr, name, bridge: None))
        assert "interface l2t0 already exists" in _open_fails(name="l2t0")
        assert _link(ipr, "l2t0")["index"] == first.index


def test_a_missing_bridge_is_named_with_the_fix(ipr):
    message = _open_fails(name="l2t0", bridge="nobr")
    assert message == (
        "bridge nobr not found: create it first, e.g. `ip link add name nobr type bridge`"
    )
    assert _link(ipr, "l2t0") is None


def test_a_bridge_that_is_not_a_bridge_is_refused(ipr):
    with Tap.open("l2t1"):
        message = _open_fails(name="l2t0", bridge="l2t1")
        assert message.startswith("l2t1 is not a bridge")
    assert _link(ipr, "l2t0") is None


def test_a_refused_mtu_says_the_limit_and_leaves_no_link(ipr):
    message = _open_fails(name="l2t0", mtu=70000)
    assert "MTU 70000" in message and "the kernel allows 68.." in message
    assert _link(ipr, "l2t0") is None


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "tap%d"])
def test_bad_names_are_refused_before_anything_is_made(ipr, name):
    assert "not a valid interface name" in _open_fails(name=name)
    assert {link.get("ifname") for link in ipr.get_links()} == {"lo"}


def test_a_group_mac_is_refused(ipr):
    assert "unicast MAC" in _open_fails(name="l2t0", mac=b"\x01\x00\x5e\x00\x00\x01")
    assert _link(ipr, "l2t0") is None


def test_missing_dev_net_tun_says_how_to_fix_it(ns, monkeypatch):
    monkeypatch.setattr(tapmod, "TUN_PATH", "/nonexistent/net/tun")
    message = _open_fails(name="l2t0")
    assert message.startswith("no /nonexistent/net/tun: load the tun module (modprobe tun)")


_NO_NET_ADMIN = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from l2vpn.errors import DeviceError
from l2vpn.tap import Tap

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]

libc = ctypes.CDLL(None, use_errno=True)
header, data = Header(0x20080522, 0), (Data * 2)()
assert libc.capget(ctypes.byref(header), data) == 0
data[0].effective &= ~(1 << 12)  # CAP_NET_ADMIN
data[0].permitted &= ~(1 << 12)
assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
try:
    Tap.open("l2t0").close()
    print("OPENED")
except DeviceError as e:
    print(e)
"""


def test_without_cap_net_admin_the_error_says_so(ipr):
    # The child inherits this thread's namespace.
    result = subprocess.run(
        [sys.executable, "-c", _NO_NET_ADMIN, ROOT],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "creating TAP l2t0 needs CAP_NET_ADMIN: run as root or grant the capability"
    )
    assert _link(ipr, "l2t0") is None

