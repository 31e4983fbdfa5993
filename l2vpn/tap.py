"""The TAP device: one non-persistent /dev/net/tun TAP, set up with pyroute2.

Theory of operation: open() checks what a user can get wrong (no tun device, no
privilege, the name taken, a missing bridge) before it creates anything, then creates
the TAP with TUNSETIFF (IFF_TUN_EXCL, so it never attaches to a TAP someone else made),
and sets up the link in the current network namespace. The TAP is not persistent: the
kernel deletes the link when the fd closes, so a crash leaves nothing behind except an
address we added to a bridge, which close() removes.

With vnet_hdr every read and write carries a 10-byte virtio-net header before the
Ethernet frame; with offloads accepted the kernel hands over GSO super-frames up to
64 KiB and segments such frames written back, which is what makes the data path fast.
"""

import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import struct

from pyroute2 import IPRoute, NetlinkError

from l2vpn.errors import DeviceError
from l2vpn.frame import ETH_HLEN, VLAN_HLEN, format_mac, is_group
from l2vpn.offload import VNET_HDR_LEN

log = logging.getLogger(__name__)

TUN_PATH = "/dev/net/tun"

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

IFNAMSIZ = 16
GSO_MAX_BYTES = 65536

# Tried in order; older kernels reject USO (and some reject TSO) with EINVAL.
OFFLOAD_CHOICES = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM,
)


_OFFLOAD_NAMES = ((TUN_F_CSUM, "csum"), (TUN_F_TSO4, "tso4"), (TUN_F_TSO6, "tso6"),
                  (TUN_F_TSO_ECN, "tso-ecn"), (TUN_F_USO4, "uso4"), (TUN_F_USO6, "uso6"))


def describe_offloads(flags: int) -> str:
    """TUNSETOFFLOAD flags as words for logs, e.g. "csum+tso4+tso6"; "off" for none."""
    return "+".join(name for bit, name in _OFFLOAD_NAMES if flags & bit) or "off"


def derive_mac(node: str, tap_name: str) -> bytes:
    """A stable locally administered unicast MAC, so ARP caches elsewhere survive restarts."""
    mac = bytearray(hashlib.sha256(f"{node}/{tap_name}".encode()).digest()[:6])
    mac[0] = (mac[0] | 0x02) & ~0x01 & 0xFF
    return bytes(mac)


def _check_name(name: str) -> bytes:
    raw = name.encode() if isinstance(name, str) else b""
    if not raw or len(raw) >= IFNAMSIZ or name in (".", "..") or any(
        c in name for c in "/:% \t\n"
    ):
        raise DeviceError(
            f"TAP name {name!r} is not a valid interface name: use 1-15 characters "
            "without '/', ':', '%' or spaces"
        )
    return raw


def _check_mac(mac) -> bytes:
    mac = bytes(mac)
    if len(mac) != 6 or is_group(mac) or mac == bytes(6):
        raise DeviceError(
            f"MAC {mac.hex(':') or '(empty)'} cannot be a TAP address: "
            "give 6 octets of a unicast MAC (first octet even), e.g. from derive_mac()"
        )
    return mac


def _check_address(address):
    if address is None or isinstance(
        address, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)
    ):
        return address
    try:
        return ipaddress.ip_interface(address)
    except ValueError:
        raise DeviceError(
            f"address {address!r} is not an interface address: write it as ADDR/PREFIX, "
            "e.g. 198.18.0.1/24"
        ) from None


def _open_tun() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise DeviceError(
            f"no {TUN_PATH}: load the tun module (modprobe tun) or give the container "
            f"{TUN_PATH}"
        ) from None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO):
            raise DeviceError(
                f"{TUN_PATH} has no driver behind it: load the tun module (modprobe tun)"
            ) from None
        if e.errno in (errno.EPERM, errno.EACCES):
            raise DeviceError(
                f"cannot open {TUN_PATH} ({e.strerror}): run as root, or give the "
                "container access to the device"
            ) from None
        raise DeviceError(f"cannot open {TUN_PATH}: {e.strerror}") from None


def _link(ipr: IPRoute, name: str):
    """The link message for NAME in the current namespace, or None."""
    indexes = ipr.link_lookup(ifname=name)
    return ipr.get_links(indexes[0])[0] if indexes else None


class Tap:
    """An open TAP device; read() and write() move one frame (with its vnet header)."""

    def __init__(self, name: str, fd: int, mtu: int, mac: bytes, index: int,
                 vnet_hdr: bool, offloads: int):
        self.name = name
        self.fd = fd
        self.mtu = mtu
        self.mac = mac
        self.index = index
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self._ipr = None  # kept open only to undo a bridge address, in the right netns
        self._bridge_addr = None  # (bridge index, IPv4Interface/IPv6Interface) we added

    @property
    def needs_net_admin_at_close(self) -> bool:
        """True when close() has netlink work to undo (an address we put on a bridge)."""
        return self._bridge_addr is not None

    @classmethod
    def open(cls, name: str, mtu: int = 1500, mac: bytes | None = None, address=None,
             bridge: str | None = None, vnet_hdr: bool = False,
             txqueuelen: int = 1000) -> "Tap":
        """Create the TAP NAME in this network namespace and bring it up; DeviceError says why not."""
        raw_name = _check_name(name)
        if mac is not None:
            mac = _check_mac(mac)
        address = _check_address(address)

        ipr = IPRoute()
        try:
            bridge_index = cls._precheck(ipr, name, bridge)
            fd = _open_tun()
            flags = IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL | (IFF_VNET_HDR if vnet_hdr else 0)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", raw_name, flags))
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise DeviceError(
                        f"creating TAP {name} needs CAP_NET_ADMIN: run as root or grant "
                        "the capability"
                    ) from None
                if e.errno in (errno.EBUSY, errno.EEXIST):
                    raise DeviceError(
                        f"interface {name} already exists: choose another tap.name or "
                        "delete it"
                    ) from None
                raise DeviceError(f"creating TAP {name} failed: {e.strerror}") from None
        except BaseException:
            ipr.close()
            raise

        # From here the Tap owns fd and ipr; close() undoes whatever was done.
        tap = cls(name, fd, mtu, mac or b"", 0, vnet_hdr, 0)
        tap._ipr = ipr
        try:
            tap._setup(ipr, mac, address, bridge, bridge_index, txqueuelen)
        except BaseException:
            tap.close()
            raise
        if tap._bridge_addr is None:
            tap._ipr = None
            ipr.close()
        return tap

    @staticmethod
    def _precheck(ipr: IPRoute, name: str, bridge: str | None) -> int | None:
        """Refuse a taken name or a wrong bridge before anything is created."""
        if _link(ipr, name) is not None:
            raise DeviceError(
                f"interface {name} already exists: choose another tap.name or delete it"
            )
        if bridge is None:
            return None
        br = _link(ipr, bridge)
        if br is None:
            raise DeviceError(
                f"bridge {bridge} not found: create it first, e.g. "
                f"`ip link add name {bridge} type bridge`"
            )
        kind = br.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        if kind != "bridge":
            raise DeviceError(
                f"{bridge} is not a bridge (it is a {kind or 'plain'} link): name a Linux "
                f"bridge, e.g. `ip link add name BR type bridge`"
            )
        return br["index"]

    def _setup(self, ipr, mac, address, bridge, bridge_index, txqueuelen):
        """Offloads, then link attributes, master, up and address; errors name the step."""
        if self.vnet_hdr:
            self._step("setting the vnet header size", fcntl.ioctl, self.fd,
                       TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            self.offloads = self._set_offloads()
        os.set_blocking(self.fd, False)

        indexes = ipr.link_lookup(ifname=self.name)
        if not indexes:
            raise DeviceError(f"TAP {self.name} vanished right after it was created")
        self.index = indexes[0]

        if mac is not None:
            self._step("setting the MAC", ipr.link, "set", index=self.index,
                       address=format_mac(mac))
        else:
            self.mac = bytes.fromhex(_link(ipr, self.name).get("address").replace(":", ""))
        self._set_mtu(ipr)
        self._step(f"setting txqueuelen {txqueuelen}", ipr.link, "set", index=self.index,
                   txqlen=txqueuelen)
        if bridge_index is not None:
            self._step(f"enslaving it to bridge {bridge}", ipr.link, "set",
                       index=self.index, master=bridge_index)
            self._warn_bridge(ipr, bridge)
        self._step("bringing it up", ipr.link, "set", index=self.index, state="up")
        if address is not None:
            self._add_address(ipr, address, bridge, bridge_index)

    def _step(self, what, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (OSError, NetlinkError) as e:
            reason = os.strerror(e.code) if isinstance(e, NetlinkError) else e.strerror
            raise DeviceError(f"setting up TAP {self.name}: {what} failed: {reason}") from None

    def _set_offloads(self) -> int:
        for flags in OFFLOAD_CHOICES:
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
                return flags
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise DeviceError(
                        f"setting up TAP {self.name}: TUNSETOFFLOAD failed: {e.strerror}"
                    ) from None
        log.warning("TAP %s: the kernel accepts no offloads; frames stay MTU-sized", self.name)
        return 0

    def _set_mtu(self, ipr):
        try:
            ipr.link("set", index=self.index, mtu=self.mtu)
        except NetlinkError as e:
            link = _link(ipr, self.name)
            lo, hi = link.get("min_mtu"), link.get("max_mtu")
            limit = f": the kernel allows {lo}..{hi} on this TAP" if lo and hi else ""
            raise DeviceError(
                f"setting up TAP {self.name}: MTU {self.mtu} refused "
                f"({os.strerror(e.code)}){limit}; set tap.mtu within it"
            ) from None

    def _warn_bridge(self, ipr, bridge):
        br = _link(ipr, bridge)
        if br.get("mtu") and br.get("mtu") < self.mtu:
            log.warning("bridge %s has MTU %d, below TAP %s MTU %d: the bridge's own "
                        "traffic uses the smaller one", bridge, br.get("mtu"), self.name,
                        self.mtu)
        if not br["flags"] & 1:  # IFF_UP
            log.warning("bridge %s is down: frames reach its ports but not its address; "
                        "bring it up (ip link set %s up)", bridge, bridge)

    def _add_address(self, ipr, address, bridge, bridge_index):
        # A bridge port's own address receives nothing: the bridge takes the frames.
        target = self.index if bridge_index is None else bridge_index
        where = self.name if bridge_index is None else f"bridge {bridge}"
        try:
            ipr.addr("add", index=target, address=str(address.ip),
                     prefixlen=address.network.prefixlen)
        except NetlinkError as e:
            if e.code == errno.EEXIST and bridge_index is not None:
                return  # the bridge's address already; it is not ours to remove
            raise DeviceError(
                f"setting up TAP {self.name}: adding address {address} to {where} failed: "
                f"{os.strerror(e.code)}"
            ) from None
        if bridge_index is not None:
            self._bridge_addr = (bridge_index, address)

    @property
    def read_size(self) -> int:
        """The largest read: a GSO super-frame with offloads, else an MTU frame with two
        VLAN tags (bridged frames carry their tags beyond the MTU), after any vnet header."""
        body = GSO_MAX_BYTES if self.offloads else self.mtu
        return (VNET_HDR_LEN if self.vnet_hdr else 0) + body + ETH_HLEN + 2 * VLAN_HLEN

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Remove the bridge address we added, then close the fd (the kernel drops the link)."""
        if self._bridge_addr is not None:
            index, address = self._bridge_addr
            self._bridge_addr = None
            try:
                self._ipr.addr("del", index=index, address=str(address.ip),
                               prefixlen=address.network.prefixlen)
            except NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                    log.warning("TAP %s: could not remove %s from the bridge: %s",
                                self.name, address, os.strerror(e.code))
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Tap({self.name!r}, fd={self.fd}, mtu={self.mtu}, mac={format_mac(self.mac)}, "
                f"vnet_hdr={self.vnet_hdr}, offloads={self.offloads:#x})")
