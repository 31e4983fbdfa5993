#!/usr/bin/env python3
"""A busy /24's broadcast and multicast chatter as a timed trace of real frames.

    python3 netns-lab/busy_lan.py [--seed N] [--net 198.19.10.0/24] [SCENARIO ...]

prints, as JSON, `peaks()` of each scenario: per flood class the most frames in any
1 s and any 100 ms, and the smallest storm-control token bucket that passes it.

Theory of operation
-------------------
One site's LAN is 254 stations behind one port of the hub: the router at .1 (default
gateway, DHCPv4/DHCPv6 server, IPv6 router, IGMP/MLD querier, UPnP gateway) and 253
hosts of the kinds in PROFILES. Each station follows what its protocols' specs say it
sends, with each timer taken from the spec named next to it; where a spec gives no rate
(how often a user opens a print dialog, how often a phone wakes) the number is an
assumption, marked "assumed", chosen on the busy side. `trace()` turns that into frames
(built with scapy, padded to the 60-byte Ethernet minimum) sorted by time.

Scenarios:
  steady         an hour of a busy LAN: everything present, phones and laptops waking,
                 sleeping and roaming, users browsing for printers and screens.
  power_restore  the worst realistic minute: every host (the router stayed up on its UPS)
                 comes up within 10 s and runs its whole start-up: DHCP, address conflict
                 detection, mDNS probing and announcing, NetBIOS registration, IPv6
                 SLAAC with DAD, MLD and IGMP joins, DHCPv6, SSDP.
  scan           a minute of the steady LAN during which one host ARP-sweeps the whole
                 /24 in 1 s (`nmap -sn`, arp-scan).

Classes are what the hub's switch sees (l2vpn/switch.py `_forward`): "broadcast" (dst
ff:ff:ff:ff:ff:ff), "multicast" (any other group dst) and "unknown_unicast" (a unicast
dst not seen as a source within the ageing time). `classify()` replays that learning for
one port; a known unicast whose dst sits on the same port is never flooded, so it does
not count (and the site's own bridge would not even send it to the hub).

Left out: frames the site's bridge never forwards (LLDP/CDP from IP phones, STP: IEEE
802.1D reserved 01:80:c2:00:00:0x), WS-Discovery (UDP 3702 on 239.255.255.250, like
SSDP, a few per join), NetBIOS browser announcements (gone with SMB1 in Windows 10 1709+),
and unicast bulk traffic, which is known unicast.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import math
import random
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache

if __name__ == "__main__":            # run as a script: on the checkout's venv, with scapy
    import bootstrap
    bootstrap.enter_or_exit(("lab",))

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Confirm, DHCP6_Renew, DHCP6_Reply,
                                DHCP6_Request, DHCP6_Solicit, DHCP6OptClientId,
                                DHCP6OptElapsedTime, DHCP6OptIA_NA, DHCP6OptServerId, DUID_LL)
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (ICMPv6MLDMultAddrRec, ICMPv6MLQuery2, ICMPv6MLReport2,
                                ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6,
                                IPv6ExtHdrHopByHop, RouterAlert)
from scapy.layers.l2 import Ether
from scapy.layers.netbios import NBNSHeader, NBNSQueryRequest, NBNSRegistrationRequest
from scapy.packet import Raw

SCENARIOS = {"steady": 3600.0, "power_restore": 60.0, "scan": 60.0}
CLASSES = ("broadcast", "multicast", "unknown_unicast")
NET = "198.19.10.0/24"      # not the lab's overlay /24 (198.19.0.0/24): no lab host answers
V6_PREFIX = "2001:db8:10::"  # RFC 3849 documentation prefix, a /64
MAC_PREFIX = b"\x02\xb1"     # locally administered, unicast
AGING_S = 300.0              # the hub's switch.aging_s default
BURST_S = 1.0                # the hub's storm_burst_s: bucket depth = rate * 1 s
MIN_FRAME = 60               # Ethernet minimum without the FCS; NICs pad to it

BCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
MDNS4, MDNS6 = ("01:00:5e:00:00:fb", "224.0.0.251"), ("33:33:00:00:00:fb", "ff02::fb")
LLMNR4, LLMNR6 = ("01:00:5e:00:00:fc", "224.0.0.252"), ("33:33:00:01:00:03", "ff02::1:3")
SSDP4 = ("01:00:5e:7f:ff:fa", "239.255.255.250")
IGMP_REPORT = ("01:00:5e:00:00:16", "224.0.0.22")
IGMP_ALL = ("01:00:5e:00:00:01", "224.0.0.1")
MLD_REPORT = ("33:33:00:00:00:16", "ff02::16")
ALL_NODES = ("33:33:00:00:00:01", "ff02::1")
ALL_ROUTERS = ("33:33:00:00:00:02", "ff02::2")
DHCP6_SERVERS = ("33:33:00:01:00:02", "ff02::1:2")

# ---------------------------------------------------------------- protocol timers
# RFC 2131 (DHCPv4): a server answers within milliseconds (assumed 2-20 ms).
DHCP_SERVER_DELAY_S = (0.002, 0.020)
# RFC 5227 §1.1 (IPv4 address conflict detection): PROBE_WAIT 1 s, PROBE_NUM 3,
# PROBE_MIN 1 s, PROBE_MAX 2 s, ANNOUNCE_WAIT 2 s, ANNOUNCE_NUM 2, ANNOUNCE_INTERVAL 2 s.
# Every kind is given the full RFC 5227 sequence; Windows and dhclient send fewer.
PROBE_WAIT_S, PROBE_NUM, PROBE_MIN_S, PROBE_MAX_S = 1.0, 3, 1.0, 2.0
ANNOUNCE_WAIT_S, ANNOUNCE_NUM, ANNOUNCE_INTERVAL_S = 2.0, 2, 2.0
# RFC 4861 §10 (IPv6 ND): MAX_RTR_SOLICITATION_DELAY 1 s; RetransTimer 1 s; routers:
# MAX_RA_DELAY_TIME 0.5 s, MIN_DELAY_BETWEEN_RAS 3 s (multicast answers to RS); §6.2.1
# MaxRtrAdvInterval 600 s, MinRtrAdvInterval 0.33 * Max = 198 s.
MAX_RS_DELAY_S, RETRANS_TIMER_S = 1.0, 1.0
MAX_RA_DELAY_S, MIN_DELAY_BETWEEN_RAS_S = 0.5, 3.0
RA_INTERVAL_S = (198.0, 600.0)
# RFC 4862 §5.4 / §5.1: DupAddrDetectTransmits 1 NS per address, after a random delay up
# to MAX_RTR_SOLICITATION_DELAY; addresses per host: link-local, stable SLAAC (RFC 7217),
# temporary (RFC 8981), and a DHCPv6 address where M is set.
# RFC 3810 §6.1 / §9.1, RFC 3376 §5.1 / §8.1: state-change reports are sent
# [Robustness Variable] = 2 times, [Unsolicited Report Interval] 1 s apart at most.
ROBUSTNESS, UNSOLICITED_REPORT_S = 2, 1.0
# RFC 3376 §8.2-8.3, RFC 3810 §9.2-9.3: the querier asks every 125 s (Query Interval);
# each member answers once, at a random moment within the Query Response Interval 10 s.
QUERY_INTERVAL_S, QUERY_RESPONSE_S = 125.0, 10.0
# RFC 8415 §7.6 (DHCPv6): SOL_MAX_DELAY 1 s; CNF_MAX_DELAY 1 s; a RENEW at T1, here half
# of a one-day preferred lifetime (assumed).
SOL_MAX_DELAY_S, DHCP6_T1_S = 1.0, 43200.0
# RFC 6762 (mDNS): §8.1 probes: 3, 250 ms apart, the first after 0-250 ms; §8.3 at least
# two announcements, 1 s apart; §5.2 queries: first after 20-120 ms, then intervals of at
# least 1 s doubling, capped at 60 min; §5.4 the first query of a start-up asks for
# unicast (QU) answers; §6 a shared-record answer waits 20-120 ms, and a record is not
# multicast again within 1 s; §7.1 known-answer suppression: no answer while the querier
# holds the record with more than half its TTL left; §10 TTL 4500 s for service records.
MDNS_PROBES, MDNS_PROBE_GAP_S, MDNS_ANNOUNCES, MDNS_ANNOUNCE_GAP_S = 3, 0.25, 2, 1.0
MDNS_QUERY_DELAY_S, MDNS_ANSWER_DELAY_S = (0.020, 0.120), (0.020, 0.120)
MDNS_MAX_INTERVAL_S, MDNS_TTL_S = 3600.0, 4500.0
# RFC 4795 §2.7 (LLMNR): LLMNR_TIMEOUT 1 s, at most 3 transmissions (systemd-resolved
# LLMNR_TRANSACTION_ATTEMPTS_MAX); unanswered names (wpad) use all 3.
LLMNR_TRIES, LLMNR_TIMEOUT_S = 3, 1.0
# NetBIOS name service: queries: Windows NetBT BcastNameQueryCount 3, BcastQueryTimeout
# 750 ms (Microsoft KB 120642/314053); registration: RFC 1002 §6 BCAST_REQ_RETRY_COUNT 3,
# BCAST_REQ_RETRY_TIMEOUT 250 ms, per name.
NBNS_QUERY_TRIES, NBNS_QUERY_GAP_S = 3, 0.75
NBNS_REG_TRIES, NBNS_REG_GAP_S = 3, 0.25
# UPnP Device Architecture 1.1 §1.1.2-1.1.3: a root device announces 3 + 2d + k
# NOTIFYs (d embedded devices, k service types), the whole set "more than once ... a few
# hundred milliseconds" apart but not over 3 times (we send 3), and again before half of
# CACHE-CONTROL max-age (1800 s) runs out; control points' M-SEARCH likewise (3 copies).
SSDP_COPIES, SSDP_COPY_GAP_S, SSDP_REFRESH_S = 3, 0.2, (300.0, 900.0)
# Linux neighbour defaults (also RFC 4861 §10 REACHABLE_TIME 30 s, randomised 0.5-1.5):
# a host refreshes its gateway entry every 15-45 s with a unicast probe; a failed
# resolution sends mcast_solicit 3 broadcasts 1 s apart; entries unused for long are
# resolved again with a broadcast.
REACHABLE_S, SOLICITS, SOLICIT_GAP_S = (15.0, 45.0), 3, 1.0
# Wi-Fi/Ethernet (re)joins: how long a sleeping or roaming device stays away (assumed).
AWAY_S = (30.0, 900.0)
# Share of (re)joins that start DHCP from scratch (DISCOVER) instead of INIT-REBOOT
# (RFC 2131 §3.2: a client that remembers its lease asks for it with a broadcast
# REQUEST). Assumed: guests and expired leases.
DISCOVER_SHARE = 0.25


@dataclass(frozen=True)
class Profile:
    """How one kind of host behaves; rates are per host per hour (all assumed)."""
    kind: str
    count: int
    dual_stack: bool = True
    dhcp_bcast_flag: bool = False  # sets the BOOTP broadcast flag: server answers broadcast
    dhcpv6: bool = False           # stateful DHCPv6 client (the router sets M)
    mdns_services: tuple = ()      # service types it announces and answers for
    mdns_host: bool = False        # answers mDNS for its own name (probes and announces)
    mdns_browse: tuple = ()        # service types it browses from joining on
    app_browses_per_h: float = 0.0  # extra browses (print dialog, AirPlay picker, Cast)
    app_browse_types: tuple = ()
    netbios_names: int = 0         # NetBIOS names registered by broadcast at join
    name_lookups_per_h: float = 0.0  # single-label names: LLMNR + NBNS + mDNS (Windows)
    ssdp_searches_per_h: float = 0.0
    ssdp_notify_set: int = 0       # 3 + 2d + k NOTIFYs of its UPnP root device; 0: none
    peer_arps_per_h: float = 0.0   # broadcast ARPs for LAN peers not in the cache
    conversations_per_h: float = 0.0  # unicast to a LAN peer (print job, file share)
    rejoins_per_h: float = 0.0     # sleep/wake, Wi-Fi power save, roaming
    llmnr: bool = False


APPLE_BROWSE = ("_companion-link._tcp", "_airplay._tcp", "_raop._tcp", "_sleep-proxy._udp")
PRINTER_SERVICES = ("_ipp._tcp", "_ipps._tcp", "_printer._tcp", "_pdl-datastream._tcp",
                    "_http._tcp", "_uscan._tcp", "_scanner._tcp")

# 253 hosts: an office floor with guests' phones (assumed mix).
PROFILES = (
    # Windows 10/11: DHCP broadcast flag set (Microsoft KB 928233, Vista and later);
    # NetBIOS over TCP/IP on by default: registers COMPUTER<00>, <20>, WORKGROUP<00>;
    # WPAD and single-label names go to LLMNR, NBNS and mDNS at once; SSDP/UPnP discovery
    # with network discovery on; mDNS responder for its own name (Windows 10 1703+).
    Profile("windows", 90, dhcp_bcast_flag=True, dhcpv6=True, mdns_host=True, llmnr=True,
            netbios_names=3, name_lookups_per_h=4, ssdp_searches_per_h=4, peer_arps_per_h=4,
            conversations_per_h=6, rejoins_per_h=0.5),
    Profile("macos", 40, dhcpv6=True, mdns_host=True,
            mdns_services=("_companion-link._tcp", "_smb._tcp"), mdns_browse=APPLE_BROWSE,
            app_browses_per_h=2, app_browse_types=("_ipp._tcp", "_airplay._tcp"),
            peer_arps_per_h=4, conversations_per_h=6, rejoins_per_h=1),
    Profile("ios", 40, dhcpv6=True, mdns_host=True,
            mdns_services=("_companion-link._tcp", "_rdlink._tcp"),
            mdns_browse=APPLE_BROWSE + ("_homekit._tcp",), app_browses_per_h=3,
            app_browse_types=("_airplay._tcp", "_ipp._tcp"), ssdp_searches_per_h=1,
            peer_arps_per_h=1, conversations_per_h=2, rejoins_per_h=4),
    # Android: no stateful DHCPv6, no host-name responder; Cast and DIAL discovery.
    Profile("android", 30, app_browses_per_h=3, app_browse_types=("_googlecast._tcp",),
            ssdp_searches_per_h=3, peer_arps_per_h=1, conversations_per_h=1,
            rejoins_per_h=4),
    # Linux desktops and servers: Avahi, cups-browsed browsing printers all the time,
    # a few NAS boxes with a DLNA server (minidlna: 3 + 0 + 3 NOTIFYs).
    Profile("linux", 30, dhcpv6=True, mdns_host=True,
            mdns_services=("_workstation._tcp", "_ssh._tcp"),
            mdns_browse=("_ipp._tcp", "_ipps._tcp"), ssdp_notify_set=6, peer_arps_per_h=4,
            conversations_per_h=4, rejoins_per_h=0.2),
    # Network printers/MFPs: AirPrint/Mopria services, NetBIOS name, UPnP PrintBasic
    # (3 + 0 + 1 NOTIFYs).
    Profile("printer", 8, mdns_host=True, mdns_services=PRINTER_SERVICES, netbios_names=2,
            ssdp_notify_set=4),
    # Desk IP phones: IPv4 only, DHCP (options 66/150), SIP to a PBX elsewhere.
    Profile("voip_phone", 15, dual_stack=False),
)
# The router: UPnP IGD with WANDevice and WANConnectionDevice embedded and three
# services: 3 + 2*2 + 3 NOTIFYs. Resolves each host again now and then (assumed 6 an hour).
ROUTER_SSDP_SET = 10
ROUTER_ARPS_PER_HOST_PER_H = 6.0


@dataclass
class Host:
    """One station of the LAN and its addresses."""
    index: int
    profile: Profile
    mac: str
    ip: str
    ll6: str
    stable6: str
    temp6: str
    dhcp6: str
    name: str
    joins: list = field(default_factory=list)   # link-up times, sorted
    away: list = field(default_factory=list)    # (left, back) intervals
    heard: dict = field(default_factory=dict)   # provider index -> when its records came

    @property
    def kind(self) -> str:
        return self.profile.kind

    def joined_at(self, t: float) -> float:
        """When the host last came up at or before t (-inf: not yet)."""
        i = bisect.bisect_right(self.joins, t)
        return self.joins[i - 1] if i else -math.inf

    def present(self, t: float) -> bool:
        return self.joined_at(t) > -math.inf and \
            not any(left <= t < back for left, back in self.away)


# ------------------------------------------------------------------------- frames


def _pad(frame) -> bytes:
    data = bytes(frame)
    return data + b"\0" * (MIN_FRAME - len(data)) if len(data) < MIN_FRAME else data


def _sol_node(addr: str) -> tuple[str, str]:
    """The solicited-node group of addr and its MAC (RFC 4291 §2.7.1, RFC 2464 §7)."""
    low = ipaddress.IPv6Address(addr).packed[-3:]
    group = str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + low))
    return "33:33:ff:" + ":".join(f"{b:02x}" for b in low), group


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@lru_cache(maxsize=None)
def arp(src_mac: str, psrc: str, pdst: str, op: int = 1, dst: str = BCAST,
        hwdst: str = ZERO_MAC) -> bytes:
    """An ARP request (op 1; from 0.0.0.0: an RFC 5227 probe) or reply (op 2)."""
    src = _mac(src_mac)
    return _pad(_mac(dst) + src + b"\x08\x06" +
                struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + src +
                ipaddress.IPv4Address(psrc).packed + _mac(hwdst) +
                ipaddress.IPv4Address(pdst).packed)


def dhcp(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, xid: int,
         msg: str, chaddr: str, bcast: bool, yiaddr: str = "0.0.0.0",
         req_ip: str | None = None, server: str | None = None, name: str = "") -> bytes:
    opts = [("message-type", msg)]
    if req_ip:
        opts.append(("requested_addr", req_ip))
    if server:
        opts.append(("server_id", server))
    if name:
        opts += [("hostname", name.encode()), ("param_req_list", [1, 3, 6, 15, 31, 33, 43, 44,
                                                                   46, 47, 119, 121, 249, 252])]
    if msg in ("offer", "ack"):
        opts += [("subnet_mask", "255.255.255.0"), ("router", server), ("lease_time", 86400)]
    opts.append("end")
    ch = bytes.fromhex(chaddr.replace(":", "")) + b"\0" * 10
    return _pad(Ether(dst=dst_mac, src=src_mac) / IP(src=src_ip, dst=dst_ip) /
                UDP(sport=sport, dport=67 if sport == 68 else 68) /
                BOOTP(op=1 if sport == 68 else 2, xid=xid, flags=0x8000 if bcast else 0,
                      chaddr=ch, yiaddr=yiaddr) / DHCP(options=opts))


def _igmp(src_mac: str, src_ip: str, dst: tuple, message: bytes) -> bytes:
    msg = message[:2] + struct.pack("!H", _csum(message)) + message[4:]
    return _pad(Ether(dst=dst[0], src=src_mac) /
                IP(src=src_ip, dst=dst[1], ttl=1, proto=2, options=[IPOption_Router_Alert()]) /
                Raw(msg))


@lru_cache(maxsize=None)
def igmp_report(src_mac: str, src_ip: str, groups: tuple, rtype: int = 4) -> bytes:
    """IGMPv3 report (RFC 3376 §4.2): rtype 4 CHANGE_TO_EXCLUDE (a join), 2 IS_EXCLUDE."""
    recs = b"".join(struct.pack("!BBH4s", rtype, 0, 0, ipaddress.IPv4Address(g).packed)
                    for g in groups)
    return _igmp(src_mac, src_ip, IGMP_REPORT,
                 struct.pack("!BBHHH", 0x22, 0, 0, 0, len(groups)) + recs)


@lru_cache(maxsize=None)
def igmp_query(src_mac: str, src_ip: str) -> bytes:
    """IGMPv3 general query (RFC 3376 §4.1): Max Resp Code 100 (10 s), QRV, QQIC."""
    return _igmp(src_mac, src_ip, IGMP_ALL,
                 struct.pack("!BBH4sBBH", 0x11, int(QUERY_RESPONSE_S * 10), 0, bytes(4),
                             ROBUSTNESS, int(QUERY_INTERVAL_S), 0))


@lru_cache(maxsize=None)
def mld_report(src_mac: str, src6: str, groups: tuple, rtype: int = 4) -> bytes:
    """MLDv2 report (RFC 3810 §5.2), hop-by-hop router alert; src :: while in DAD."""
    recs = [ICMPv6MLDMultAddrRec(rtype=rtype, dst=g) for g in groups]
    return _pad(Ether(dst=MLD_REPORT[0], src=src_mac) /
                IPv6(src=src6, dst=MLD_REPORT[1], hlim=1) /
                IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2(records=recs))


@lru_cache(maxsize=None)
def mld_query(src_mac: str, src6: str) -> bytes:
    return _pad(Ether(dst=ALL_NODES[0], src=src_mac) / IPv6(src=src6, dst=ALL_NODES[1], hlim=1) /
                IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLQuery2(mrd=10000))


@lru_cache(maxsize=None)
def ns(src_mac: str, src6: str, target: str, dst: tuple | None = None) -> bytes:
    """Neighbour solicitation: DAD (src ::) or address resolution, to target's group."""
    mac, group = dst or _sol_node(target)
    opts = ICMPv6NDOptSrcLLAddr(lladdr=src_mac) if src6 != "::" else None
    pkt = Ether(dst=mac, src=src_mac) / IPv6(src=src6, dst=group, hlim=255) / \
        ICMPv6ND_NS(tgt=target)
    return _pad(pkt / opts if opts is not None else pkt)


@lru_cache(maxsize=None)
def na(src_mac: str, src6: str, target: str, dst_mac: str, dst6: str) -> bytes:
    return _pad(Ether(dst=dst_mac, src=src_mac) / IPv6(src=src6, dst=dst6, hlim=255) /
                ICMPv6ND_NA(tgt=target, R=0, S=1, O=1))


@lru_cache(maxsize=None)
def rs(src_mac: str, src6: str) -> bytes:
    return _pad(Ether(dst=ALL_ROUTERS[0], src=src_mac) / IPv6(src=src6, dst=ALL_ROUTERS[1],
                                                             hlim=255) /
                ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=src_mac))


@lru_cache(maxsize=None)
def ra(src_mac: str, src6: str) -> bytes:
    """M=1, O=1: addresses from SLAAC and DHCPv6 both."""
    return _pad(Ether(dst=ALL_NODES[0], src=src_mac) / IPv6(src=src6, dst=ALL_NODES[1],
                                                           hlim=255) /
                ICMPv6ND_RA(M=1, O=1, routerlifetime=1800) /
                ICMPv6NDOptSrcLLAddr(lladdr=src_mac) /
                ICMPv6NDOptPrefixInfo(prefix=V6_PREFIX, prefixlen=64, validlifetime=86400 * 30,
                                      preferredlifetime=86400 * 7))


def dhcp6(kind, src_mac: str, dst: tuple, src6: str, trid: int, client_mac: str,
          server_mac: str | None = None) -> bytes:
    msg = kind(trid=trid) / DHCP6OptClientId(duid=DUID_LL(lladdr=client_mac))
    if server_mac:
        msg = msg / DHCP6OptServerId(duid=DUID_LL(lladdr=server_mac))
    msg = msg / DHCP6OptIA_NA(iaid=1) / DHCP6OptElapsedTime()
    client = kind not in (DHCP6_Advertise, DHCP6_Reply)
    return _pad(Ether(dst=dst[0], src=src_mac) / IPv6(src=src6, dst=dst[1]) /
                UDP(sport=546 if client else 547, dport=547 if client else 546) / msg)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def readdress(frame: bytes, dst_mac: str, dst_ip: str) -> bytes:
    """frame (Ethernet / IPv4 or IPv6 / UDP, no options) sent to dst_mac, dst_ip instead;
    checksums made anew. Much cheaper than building it again with scapy."""
    out = bytearray(frame)
    out[0:6] = _mac(dst_mac)
    if frame[12:14] == b"\x08\x00":
        ihl = (frame[14] & 0x0F) * 4
        out[30:34] = ipaddress.IPv4Address(dst_ip).packed
        out[24:26] = b"\0\0"
        out[24:26] = struct.pack("!H", _csum(bytes(out[14:14 + ihl])))
        src, dst, udp = bytes(out[26:30]), bytes(out[30:34]), 14 + ihl
        ulen = struct.unpack_from("!H", frame, udp + 4)[0]
        pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    else:
        out[38:54] = ipaddress.IPv6Address(dst_ip).packed
        src, dst, udp = bytes(out[22:38]), bytes(out[38:54]), 54
        ulen = struct.unpack_from("!H", frame, udp + 4)[0]
        pseudo = src + dst + struct.pack("!IxxxB", ulen, 17)
    out[udp + 6:udp + 8] = b"\0\0"
    c = _csum(pseudo + bytes(out[udp:udp + ulen])) or 0xFFFF
    out[udp + 6:udp + 8] = struct.pack("!H", c)
    return bytes(out)


def _l3(family: int, src_ip: str, dst_ip: str, hlim: int = 255):
    return IP(src=src_ip, dst=dst_ip, ttl=hlim) if family == 4 else \
        IPv6(src=src_ip, dst=dst_ip, hlim=hlim)


@lru_cache(maxsize=None)
def mdns_probe(host_i: int, mac: str, family: int, src_ip: str, name: str,
               services: tuple) -> bytes:
    """One probe for the host name and each service instance (RFC 6762 §8.1-8.2)."""
    (gmac, gip) = MDNS4 if family == 4 else MDNS6
    names = [f"{name}.local."] + [f"{name}.{s}.local." for s in services]
    qd = [DNSQR(qname=n, qtype="ALL", unicastresponse=1) for n in names]
    auth = DNSRR(rrname=f"{name}.local.", type="A" if family == 4 else "AAAA", ttl=120,
                 rdata=src_ip)
    return _pad(Ether(dst=gmac, src=mac) / _l3(family, src_ip, gip) / UDP(sport=5353, dport=5353) /
                DNS(id=0, rd=0, qd=qd, ns=auth))


def mdns_answer(host_i: int, mac: str, family: int, src_ip: str, name: str, services: tuple,
                ttl: int = int(MDNS_TTL_S), dst: tuple | None = None) -> bytes:
    """An announcement, answer or goodbye (ttl 0): PTR/SRV per service, the address;
    multicast, or unicast to dst (mac, ip)."""
    frame = _mdns_answer(host_i, mac, family, src_ip, name, services, ttl)
    return frame if dst is None else readdress(frame, *dst)


@lru_cache(maxsize=None)
def _mdns_answer(host_i: int, mac: str, family: int, src_ip: str, name: str, services: tuple,
                 ttl: int) -> bytes:
    (gmac, gip) = MDNS4 if family == 4 else MDNS6
    an = [DNSRR(rrname=f"{name}.local.", type="A" if family == 4 else "AAAA",
                ttl=min(ttl, 120), cacheflush=1, rdata=src_ip)]
    for s in services:
        inst = f"{name}.{s}.local."
        an += [DNSRR(rrname=f"{s}.local.", type="PTR", ttl=ttl, rdata=inst),
               DNSRRSRV(rrname=inst, ttl=min(ttl, 120), port=631, target=f"{name}.local.")]
    return _pad(Ether(dst=gmac, src=mac) / _l3(family, src_ip, gip) / UDP(sport=5353, dport=5353) /
                DNS(id=0, qr=1, aa=1, rd=0, an=an))


@lru_cache(maxsize=None)
def mdns_query(host_i: int, mac: str, family: int, src_ip: str, names: tuple, qtype: str,
               qu: bool) -> bytes:
    (gmac, gip) = MDNS4 if family == 4 else MDNS6
    qd = [DNSQR(qname=n if n.endswith(".") else n + ".local.", qtype=qtype,
                unicastresponse=int(qu)) for n in names]
    return _pad(Ether(dst=gmac, src=mac) / _l3(family, src_ip, gip) / UDP(sport=5353, dport=5353) /
                DNS(id=0, rd=0, qd=qd))


@lru_cache(maxsize=None)
def llmnr_query(mac: str, family: int, src_ip: str, name: str, txid: int) -> bytes:
    (gmac, gip) = LLMNR4 if family == 4 else LLMNR6
    return _pad(Ether(dst=gmac, src=mac) / _l3(family, src_ip, gip, 1) /
                UDP(sport=49152 + txid % 16000, dport=5355) /
                DNS(id=txid, rd=0, qd=DNSQR(qname=name, qtype="A" if family == 4 else "AAAA")))


@lru_cache(maxsize=None)
def nbns(mac: str, src_ip: str, bcast_ip: str, name: str, suffix: int, txid: int,
         register: bool) -> bytes:
    hdr = NBNSHeader(NAME_TRN_ID=txid, OPCODE=5 if register else 0, NM_FLAGS=0x11,
                     ARCOUNT=1 if register else 0)
    body = NBNSRegistrationRequest(QUESTION_NAME=name.upper(), SUFFIX=suffix,
                                   NB_ADDRESS=[src_ip]) if register else \
        NBNSQueryRequest(QUESTION_NAME=name.upper(), SUFFIX=suffix)
    return _pad(Ether(dst=BCAST, src=mac) / IP(src=src_ip, dst=bcast_ip) /
                UDP(sport=137, dport=137) / hdr / body)


@lru_cache(maxsize=None)
def ssdp(mac: str, src_ip: str, text: str) -> bytes:
    return _pad(Ether(dst=SSDP4[0], src=mac) / IP(src=src_ip, dst=SSDP4[1], ttl=2) /
                UDP(sport=1900, dport=1900) / Raw(text.encode()))


def _ssdp_notify(ip: str, n: int, usn: str) -> str:
    return ("NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
            "CACHE-CONTROL: max-age=1800\r\n"
            f"LOCATION: http://{ip}:49152/desc{n}.xml\r\nNT: upnp:rootdevice\r\n"
            f"NTS: ssdp:alive\r\nSERVER: busy_lan/1 UPnP/1.1 x/1\r\nUSN: uuid:{usn}::{n}\r\n\r\n")


_MSEARCH = ("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n"
            "MX: 2\r\nST: {st}\r\n\r\n")


@lru_cache(maxsize=None)
def tcp_syn(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, dport: int,
            ack: bool = False) -> bytes:
    """A TCP SYN (or the SYN-ACK back): the first frame of a connection on the LAN."""
    sport, dport = (dport, 50000) if ack else (50000, dport)
    src, dst = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1 if ack else 0, 5 << 4,
                      0x12 if ack else 0x02, 64240, 0, 0)
    c = _csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return _pad(_mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + ip + tcp)


# ------------------------------------------------------------------------- the model


class _Lan:
    """The stations and what they send; `out` collects (t, frame, protocol)."""

    def __init__(self, rng: random.Random, net: str, duration_s: float):
        self.rng, self.duration_s = rng, duration_s
        self.net = ipaddress.IPv4Network(net)
        if not self.net.subnet_of(ipaddress.IPv4Network("198.18.0.0/15")) \
                or self.net.prefixlen != 24:
            raise ValueError(f"net must be a /24 inside 198.18.0.0/15, not {net}")
        self.bcast_ip = str(self.net.broadcast_address)
        self.out: list[tuple[float, bytes, str]] = []
        self.queries: list[tuple] = []     # mDNS queries, answered in `answer_queries`
        self.mcasts: dict[tuple, list] = {}  # (provider, family) -> its multicasts, sorted
        self.router = self._station(1, None)
        self.hosts: list[Host] = []
        i = 2
        for prof in PROFILES:
            for _ in range(prof.count):
                self.hosts.append(self._station(i, prof))
                i += 1
        assert i == 255, "PROFILES must fill .2-.254"
        self.providers: dict[str, list[Host]] = {}
        for h in self.hosts:
            for s in h.profile.mdns_services:
                self.providers.setdefault(s, []).append(h)
        self.next_ra = 0.0       # the router's multicast RA rate limit (RFC 4861 §6.2.6)
        self.resolved: dict[tuple, float] = {}   # (a, b) -> when a last resolved b

    def _station(self, i: int, prof: Profile | None) -> Host:
        kind = 0 if prof is None else PROFILES.index(prof) + 1
        mac = ":".join(f"{b:02x}" for b in MAC_PREFIX + bytes([0, kind, 0, i]))
        ip = str(self.net.network_address + i)
        iid = f"{0xb100 | i:x}"
        return Host(i, prof or Profile("router", 1, mdns_host=False), mac, ip,
                    f"fe80::{iid}" if prof else "fe80::1", f"{V6_PREFIX}{0x5700 + i:x}",
                    f"{V6_PREFIX}7:{0x3e00 + i:x}", f"{V6_PREFIX}d:{i:x}",
                    f"{prof.kind if prof else 'router'}-{i:03d}")

    def emit(self, t: float, frame: bytes, proto: str) -> None:
        if 0.0 <= t < self.duration_s:
            self.out.append((t, frame, proto))

    def poisson(self, rate_per_h: float, start: float = 0.0, end: float | None = None):
        """Event times of a Poisson process of rate_per_h over [start, end)."""
        end = self.duration_s if end is None else end
        if rate_per_h <= 0:
            return
        t = start
        while True:
            t += self.rng.expovariate(rate_per_h / 3600.0)
            if t >= end:
                return
            yield t

    def u(self, a: float, b: float) -> float:
        return self.rng.uniform(a, b)

    # -- joining -----------------------------------------------------------------

    def join(self, h: Host, t0: float, cold: bool) -> None:
        """A host's link comes up (boot when cold, wake/roam otherwise)."""
        p, r = h.profile, self.rng
        if t0 not in h.joins:
            bisect.insort(h.joins, t0)
        t_ack = self.dhcpv4(h, t0 + self.u(0.0, 0.1), r.random() < DISCOVER_SHARE)
        self.acd(h, t_ack)
        self.emit(t_ack + self.u(0.05, 0.5), arp(h.mac, h.ip, self.router.ip), "arp")
        self.emit(t_ack + self.u(0.05, 0.5) + 0.001,
                  arp(self.router.mac, self.router.ip, h.ip, 2, h.mac, h.mac), "arp")
        groups4 = self.groups4(h)
        if groups4:
            self.reports(h, t_ack, lambda: igmp_report(h.mac, h.ip, groups4), "igmp")
        if p.netbios_names:
            t = t_ack + self.u(0.0, 0.5)
            suffixes = (0x00, 0x20, 0x00)[:p.netbios_names]
            for k, suffix in enumerate(suffixes):
                name = h.name if k < 2 else "WORKGROUP"
                txid = (h.index << 2) + k
                for n in range(NBNS_REG_TRIES):
                    self.emit(t + k * 0.01 + n * NBNS_REG_GAP_S,
                              nbns(h.mac, h.ip, self.bcast_ip, name, suffix, txid, True), "nbns")
        if p.mdns_host:
            self.mdns_start(h, t_ack)
        if p.mdns_browse:
            self.browse(h, t_ack, p.mdns_browse, None)
        if p.llmnr:   # WPAD auto-detection on every network change
            self.name_lookup(h, t_ack + self.u(0.2, 2.0), "wpad")
        if p.ssdp_searches_per_h and (cold or p.kind == "windows"):
            self.ssdp_search(h, t_ack + self.u(0.5, 3.0))
        if p.ssdp_notify_set:
            self.ssdp_notify(h, t_ack + self.u(0.5, 3.0), p.ssdp_notify_set, refresh=True)
        if p.dual_stack:
            self.ipv6_start(h, t0, cold)

    def groups4(self, h: Host) -> tuple:
        p = h.profile
        groups = []
        if p.mdns_host or p.mdns_browse or p.app_browses_per_h:
            groups.append(MDNS4[1])
        if p.llmnr:
            groups.append(LLMNR4[1])
        if p.ssdp_searches_per_h or p.ssdp_notify_set:
            groups.append(SSDP4[1])
        return tuple(groups)

    def groups6(self, h: Host) -> tuple:
        p = h.profile
        groups = []
        if p.mdns_host or p.mdns_browse or p.app_browses_per_h:
            groups.append(MDNS6[1])
        if p.llmnr:
            groups += [LLMNR6[1], "ff02::c"]
        return tuple(groups)

    def reports(self, h: Host, t: float, frame, proto: str) -> None:
        """A state-change report and its retransmissions (RFC 3376 §5.1, RFC 3810 §6.1)."""
        for _ in range(ROBUSTNESS):
            t += self.u(0.0, UNSOLICITED_REPORT_S)
            self.emit(t, frame(), proto)

    def dhcpv4(self, h: Host, t: float, discover: bool) -> float:
        """DORA or INIT-REBOOT (RFC 2131 §3.1-3.2); returns when the address is bound."""
        r, rt = self.rng, self.router
        bc = h.profile.dhcp_bcast_flag
        xid = r.getrandbits(32)
        reply_mac, reply_ip = (BCAST, "255.255.255.255") if bc else (h.mac, h.ip)
        if discover:
            self.emit(t, dhcp(h.mac, BCAST, "0.0.0.0", "255.255.255.255", 68, xid, "discover",
                              h.mac, bc, name=h.name), "dhcp")
            t += self.u(*DHCP_SERVER_DELAY_S)
            self.emit(t, dhcp(rt.mac, reply_mac, rt.ip, reply_ip, 67, xid, "offer", h.mac, bc,
                              yiaddr=h.ip, server=rt.ip), "dhcp")
            t += self.u(0.001, 0.010)
        self.emit(t, dhcp(h.mac, BCAST, "0.0.0.0", "255.255.255.255", 68, xid, "request",
                          h.mac, bc, req_ip=h.ip, server=rt.ip if discover else None,
                          name=h.name), "dhcp")
        t += self.u(*DHCP_SERVER_DELAY_S)
        self.emit(t, dhcp(rt.mac, reply_mac, rt.ip, reply_ip, 67, xid, "ack", h.mac, bc,
                          yiaddr=h.ip, server=rt.ip), "dhcp")
        return t

    def acd(self, h: Host, t: float) -> None:
        """RFC 5227 §2.1-2.3: probes from 0.0.0.0, then announcements."""
        t += self.u(0.0, PROBE_WAIT_S)
        for n in range(PROBE_NUM):
            self.emit(t, arp(h.mac, "0.0.0.0", h.ip), "arp")
            if n < PROBE_NUM - 1:
                t += self.u(PROBE_MIN_S, PROBE_MAX_S)
        t += ANNOUNCE_WAIT_S
        for n in range(ANNOUNCE_NUM):
            self.emit(t + n * ANNOUNCE_INTERVAL_S, arp(h.mac, h.ip, h.ip), "arp")

    def families(self, h: Host) -> tuple:
        return (4, 6) if h.profile.dual_stack else (4,)

    def mdns_start(self, h: Host, t: float) -> None:
        """Probe, then announce, on each address family (RFC 6762 §8)."""
        p = h.profile
        t += self.u(0.0, MDNS_PROBE_GAP_S)
        for fam in self.families(h):
            src = h.ip if fam == 4 else h.ll6
            for n in range(MDNS_PROBES):
                self.emit(t + n * MDNS_PROBE_GAP_S,
                          mdns_probe(h.index, h.mac, fam, src, h.name, p.mdns_services), "mdns")
            ta = t + MDNS_PROBES * MDNS_PROBE_GAP_S
            for n in range(MDNS_ANNOUNCES):
                self.emit(ta + n * MDNS_ANNOUNCE_GAP_S,
                          mdns_answer(h.index, h.mac, fam, src, h.name, p.mdns_services),
                          "mdns")
                self.multicast_at(h, fam, ta + n * MDNS_ANNOUNCE_GAP_S)

    def multicast_at(self, h: Host, fam: int, t: float) -> None:
        bisect.insort(self.mcasts.setdefault((h.index, fam), []), t)

    def last_multicast(self, h: Host, fam: int, t: float) -> float:
        times = self.mcasts.get((h.index, fam), ())
        i = bisect.bisect_right(times, t)
        return times[i - 1] if i else -math.inf

    def mdns_goodbye(self, h: Host, t: float) -> None:
        for fam in self.families(h):
            src = h.ip if fam == 4 else h.ll6
            self.emit(t, mdns_answer(h.index, h.mac, fam, src, h.name, h.profile.mdns_services,
                                     ttl=0), "mdns")

    def browse(self, h: Host, start: float, types: tuple, end: float | None,
               since: float | None = None) -> None:
        """A continuous query (RFC 6762 §5.2) from start (or begun at `since` in the past)
        until end; the first query of a fresh start asks for unicast answers (§5.4)."""
        end = self.duration_s if end is None else min(end, self.duration_s)
        t = (since if since is not None else start) + self.u(*MDNS_QUERY_DELAY_S)
        interval, first = 1.0, since is None
        while t < end:
            if t >= start:
                for fam in self.families(h):
                    self.queries.append((t, h, fam, types, first))
                first = False
            t += interval
            interval = min(interval * 2, MDNS_MAX_INTERVAL_S)

    def name_lookup(self, h: Host, t: float, name: str) -> None:
        """A single-label name: LLMNR (v4+v6), NetBIOS and mDNS at once (Windows)."""
        txid = (h.index * 131 + sum(name.encode())) & 0x7FFF   # same name, same frames
        for n in range(LLMNR_TRIES):
            for fam in self.families(h):
                src = h.ip if fam == 4 else h.ll6
                self.emit(t + n * LLMNR_TIMEOUT_S, llmnr_query(h.mac, fam, src, name, txid),
                          "llmnr")
        for n in range(NBNS_QUERY_TRIES):
            self.emit(t + n * NBNS_QUERY_GAP_S,
                      nbns(h.mac, h.ip, self.bcast_ip, name, 0x00, txid, False), "nbns")
        for fam in self.families(h):
            src = h.ip if fam == 4 else h.ll6
            self.emit(t, mdns_query(h.index, h.mac, fam, src, (name,), "A", False), "mdns")

    def ssdp_search(self, h: Host, t: float) -> None:
        st = "ssdp:all" if h.kind == "windows" else "urn:dial-multiscreen-org:service:dial:1"
        for n in range(SSDP_COPIES):
            self.emit(t + n * SSDP_COPY_GAP_S, ssdp(h.mac, h.ip, _MSEARCH.format(st=st)), "ssdp")

    def ssdp_notify(self, h: Host, t: float, set_size: int, refresh: bool) -> None:
        while t < self.duration_s:
            for c in range(SSDP_COPIES):
                for n in range(set_size):
                    self.emit(t + c * SSDP_COPY_GAP_S + n * 0.002,
                              ssdp(h.mac, h.ip, _ssdp_notify(h.ip, n, h.name)), "ssdp")
            if not refresh:
                return
            t += self.u(*SSDP_REFRESH_S)

    def ipv6_start(self, h: Host, t0: float, cold: bool) -> None:
        """Link-local DAD, RS/RA, SLAAC addresses with DAD, DHCPv6 (RFC 4861/4862/8415)."""
        rt = self.router
        t = t0 + self.u(0.0, MAX_RS_DELAY_S)
        self.dad(h, t, h.ll6)
        groups6 = self.groups6(h)
        if groups6:
            self.reports(h, t + RETRANS_TIMER_S,
                         lambda: mld_report(h.mac, h.ll6, groups6), "mld")
        t += RETRANS_TIMER_S + self.u(0.0, MAX_RS_DELAY_S)
        self.emit(t, rs(h.mac, h.ll6), "nd")
        t_ra = max(t + self.u(0.0, MAX_RA_DELAY_S), self.next_ra)
        if t_ra >= self.next_ra:     # one multicast RA per MIN_DELAY_BETWEEN_RAS answers all
            self.emit(t_ra, ra(rt.mac, rt.ll6), "nd")
            self.next_ra = t_ra + MIN_DELAY_BETWEEN_RAS_S
        t = t_ra + 0.01
        self.dad(h, t, h.stable6)
        self.dad(h, t + self.u(0.0, 0.05), h.temp6)
        if h.profile.dhcpv6:
            t += self.u(0.0, SOL_MAX_DELAY_S)
            trid = self.rng.getrandbits(24)
            if cold:
                self.emit(t, dhcp6(DHCP6_Solicit, h.mac, DHCP6_SERVERS, h.ll6, trid, h.mac),
                          "dhcpv6")
                t += self.u(*DHCP_SERVER_DELAY_S)
                self.emit(t, dhcp6(DHCP6_Advertise, rt.mac, (h.mac, h.ll6), rt.ll6, trid, h.mac,
                                   rt.mac), "dhcpv6")
                t += self.u(0.001, 0.010)
                self.emit(t, dhcp6(DHCP6_Request, h.mac, DHCP6_SERVERS, h.ll6, trid + 1, h.mac,
                                   rt.mac), "dhcpv6")
            else:
                self.emit(t, dhcp6(DHCP6_Confirm, h.mac, DHCP6_SERVERS, h.ll6, trid, h.mac),
                          "dhcpv6")
            t += self.u(*DHCP_SERVER_DELAY_S)
            self.emit(t, dhcp6(DHCP6_Reply, rt.mac, (h.mac, h.ll6), rt.ll6, trid, h.mac,
                               rt.mac), "dhcpv6")
            self.dad(h, t + 0.001, h.dhcp6)

    def dad(self, h: Host, t: float, addr: str) -> None:
        """Join addr's solicited-node group (MLD from ::) and send one DAD NS."""
        group = _sol_node(addr)[1]
        self.reports(h, t, lambda: mld_report(h.mac, "::", (group,)), "mld")
        self.emit(t + self.u(0.0, 0.01), ns(h.mac, "::", addr), "nd")

    # -- living on the LAN ---------------------------------------------------------

    def router_background(self) -> None:
        """RAs, IGMP/MLD general queries, UPnP NOTIFYs; the timers' phases are random."""
        rt = self.router
        t = self.u(0.0, RA_INTERVAL_S[1])
        while t < self.duration_s:
            self.emit(t, ra(rt.mac, rt.ll6), "nd")
            t += self.u(*RA_INTERVAL_S)
        t = self.u(0.0, QUERY_INTERVAL_S)
        while t < self.duration_s:
            self.general_query(t)
            t += QUERY_INTERVAL_S
        self.ssdp_notify(rt, self.u(0.0, SSDP_REFRESH_S[1]), ROUTER_SSDP_SET, True)

    def general_query(self, t: float) -> None:
        rt = self.router
        self.emit(t, igmp_query(rt.mac, rt.ip), "igmp")
        self.emit(t + 0.001, mld_query(rt.mac, rt.ll6), "mld")
        for h in self.hosts:
            if not h.present(t):
                continue
            g4, g6 = self.groups4(h), self.groups6(h)
            if g4:
                self.emit(t + self.u(0.0, QUERY_RESPONSE_S), igmp_report(h.mac, h.ip, g4, 2),
                          "igmp")
            if h.profile.dual_stack:
                # every address's solicited-node group, and the service groups
                sol = tuple(sorted({_sol_node(a)[1] for a in (h.ll6, h.stable6, h.temp6)}))
                self.emit(t + self.u(0.0, QUERY_RESPONSE_S),
                          mld_report(h.mac, h.ll6, sol + g6, 2), "mld")

    def host_background(self, h: Host, start: float) -> None:
        p, rt, r = h.profile, self.router, self.rng
        # the gateway's neighbour entry kept fresh by unicast probes (known unicast)
        t = start + self.u(*REACHABLE_S)
        while t < self.duration_s:
            if h.present(t):     # (the router's unicast reply changes nothing here)
                self.emit(t, arp(h.mac, h.ip, rt.ip, 1, rt.mac, rt.mac), "arp")
            t += self.u(*REACHABLE_S)
        for t in self.poisson(ROUTER_ARPS_PER_HOST_PER_H, start):
            self.resolve(rt, h, t)
        mine = [t for t in self.poisson(p.peer_arps_per_h, start) if h.present(t)]
        for t in mine:
            self.resolve(h, self.peer_for(h), t)
        for t in self.poisson(p.conversations_per_h, start):
            if h.present(t):
                self.conversation(h, self.peer_for(h), t)
        for t in self.poisson(p.name_lookups_per_h, start):
            if h.present(t):
                self.name_lookup(h, t, r.choice(("nas", "printer", "fileserver", "intranet",
                                                 "wpad", "scanner")))
        for t in self.poisson(p.ssdp_searches_per_h, start):
            if h.present(t):
                self.ssdp_search(h, t)
        for t in self.poisson(p.app_browses_per_h, start):
            if h.present(t):
                self.browse(h, t, p.app_browse_types, t + self.u(10.0, 60.0))
        if p.dhcpv6:
            for t in self.poisson(3600.0 / DHCP6_T1_S, start):
                if not h.present(t):
                    continue
                trid = r.getrandbits(24)
                self.emit(t, dhcp6(DHCP6_Renew, h.mac, DHCP6_SERVERS, h.ll6, trid, h.mac,
                                   rt.mac), "dhcpv6")
                self.emit(t + self.u(*DHCP_SERVER_DELAY_S),
                          dhcp6(DHCP6_Reply, rt.mac, (h.mac, h.ll6), rt.ll6, trid, h.mac,
                                rt.mac), "dhcpv6")
        if p.dual_stack:
            for t in self.poisson(ROUTER_ARPS_PER_HOST_PER_H, start):
                self.emit(t, ns(rt.mac, rt.ll6, h.stable6), "nd")
                if h.present(t):
                    self.emit(t + 0.001, na(h.mac, h.stable6, h.stable6, rt.mac, rt.ll6), "nd")

    def peer_for(self, h: Host) -> Host:
        """Who a host talks to on the LAN: printers, Linux servers, Macs (assumed)."""
        r = self.rng
        pool = [x for x in self.hosts if x.kind in ("printer", "linux", "macos") and x is not h]
        return r.choice(pool)

    def resolve(self, a: Host, b: Host, t: float) -> None:
        """a ARPs for b (broadcast); b answers if present, else a tries SOLICITS times."""
        here = b.present(t)
        for n in range(1 if here else SOLICITS):
            self.emit(t + n * SOLICIT_GAP_S, arp(a.mac, a.ip, b.ip), "arp")
        if here:
            self.emit(t + 0.0005, arp(b.mac, b.ip, a.ip, 2, a.mac, a.mac), "arp")
            self.resolved[(a.index, b.index)] = t

    def conversation(self, a: Host, b: Host, t: float) -> None:
        """a opens a connection to b: ARP first unless a resolved b within 10 min (a
        STALE neighbour entry is used as is, RFC 4861 §7.3.3), then SYN and SYN-ACK."""
        last = self.resolved.get((a.index, b.index))
        if last is None or t - last > 600.0:
            self.resolve(a, b, t)
            if not b.present(t):
                return
            t += 0.002
        port = 631 if b.kind == "printer" else 445
        self.emit(t, tcp_syn(a.mac, b.mac, a.ip, b.ip, port), "tcp")
        if b.present(t):
            self.emit(t + 0.0005, tcp_syn(b.mac, a.mac, b.ip, a.ip, port, ack=True), "tcp")

    def plan_rejoins(self) -> list[tuple[Host, float]]:
        """When hosts leave (sleep, walk away) and come back; marks them away meanwhile."""
        plan = []
        for h in self.hosts:
            for t in self.poisson(h.profile.rejoins_per_h):
                left = t - self.u(*AWAY_S)
                if left < 0.0 or (h.away and left < h.away[-1][1]):
                    continue
                h.away.append((left, t))
                plan.append((h, t))
        return plan

    def rejoin(self, h: Host, back: float) -> None:
        left = next(a for a, b in h.away if b == back)
        if h.profile.mdns_host:
            self.mdns_goodbye(h, left)
        # the router still forwards to it now and then: a failed resolution
        self.resolve(self.router, h, left + self.u(5.0, 60.0))
        self.join(h, back, cold=False)

    # -- mDNS answers -----------------------------------------------------------------

    def answer_queries(self) -> None:
        """Send the collected queries and their answers in time order: a provider answers
        unless the querier holds its records with over half the TTL left (§7.1) or it
        multicast them within the last second (§6); a QU query is answered by unicast when
        the records were multicast within a quarter of the TTL (§5.4)."""
        for t, q, fam, types, qu in sorted(self.queries, key=lambda x: x[0]):
            if not (0.0 <= t < self.duration_s) or not q.present(t):
                continue
            src = q.ip if fam == 4 else q.ll6
            self.emit(t, mdns_query(q.index, q.mac, fam, src, types, "PTR", qu), "mdns")
            since = q.joined_at(t)          # its cache starts empty at each join
            done = set()
            for s in types:
                for p in self.providers.get(s, ()):
                    if p is q or p.index in done or not p.present(t) or \
                            fam not in self.families(p):
                        continue
                    done.add(p.index)
                    last = self.last_multicast(p, fam, t)
                    if last < p.joined_at(t):
                        continue      # still probing: no answers before it announced
                    heard = max(q.heard.get(p.index, -math.inf), last)
                    if heard >= since and t - heard <= MDNS_TTL_S / 2:
                        continue      # a known answer: suppressed
                    ta = t + self.u(*MDNS_ANSWER_DELAY_S)
                    psrc = p.ip if fam == 4 else p.ll6
                    if qu and t - last <= MDNS_TTL_S / 4:
                        qdst = (q.mac, q.ip) if fam == 4 else (q.mac, q.ll6)
                        self.emit(ta, mdns_answer(p.index, p.mac, fam, psrc, p.name,
                                                  p.profile.mdns_services, dst=qdst), "mdns")
                    elif t - last >= 1.0:   # not multicast again within a second
                        self.emit(ta, mdns_answer(p.index, p.mac, fam, psrc, p.name,
                                                  p.profile.mdns_services), "mdns")
                        self.multicast_at(p, fam, ta)
                    q.heard[p.index] = ta


# ------------------------------------------------------------------------- scenarios


def labelled_trace(scenario: str, seed: int = 0, net: str = NET) -> list[tuple[float, bytes, str]]:
    """(t_s, frame, protocol) of one scenario, sorted by time."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
    rng = random.Random(f"busy_lan/{scenario}/{seed}")
    lan = _Lan(rng, net, SCENARIOS[scenario])
    lan.router.joins.append(-math.inf)
    if scenario == "power_restore":
        # every host boots within 10 s; the router rode through on its UPS
        ups = [(h, rng.uniform(0.0, 10.0)) for h in lan.hosts]
        for h, t in ups:
            h.joins.append(t)     # known before anyone's frames are made
        for h, t in ups:
            lan.join(h, t, cold=True)
            lan.host_background(h, t + 15.0)
    else:
        plan = lan.plan_rejoins()
        for h in lan.hosts:
            since = -rng.uniform(600.0, 8 * 3600.0)   # on the LAN for a while already
            h.joins.append(since)
            for fam in lan.families(h):
                lan.multicast_at(h, fam, -rng.uniform(0.0, MDNS_TTL_S / 2))
        for h in lan.hosts:
            if h.profile.mdns_browse:
                lan.browse(h, 0.0, h.profile.mdns_browse, None, since=h.joins[0])
            if h.profile.ssdp_notify_set:
                lan.ssdp_notify(h, rng.uniform(0.0, SSDP_REFRESH_S[1]),
                                h.profile.ssdp_notify_set, refresh=True)
            lan.host_background(h, 0.0)
        for h, back in plan:
            lan.rejoin(h, back)
        if scenario == "scan":
            _arp_sweep(lan, 20.0)
    lan.router_background()
    lan.answer_queries()
    lan.out.sort(key=lambda x: x[0])
    return lan.out


def _arp_sweep(lan: _Lan, t0: float) -> None:
    """One Linux host asks for every address of the /24 within 1 s; hosts answer."""
    scanner = next(h for h in lan.hosts if h.kind == "linux")
    targets = [str(lan.net.network_address + i) for i in range(1, 255) if i != scanner.index]
    by_ip = {h.ip: h for h in [lan.router, *lan.hosts]}
    for n, ip in enumerate(targets):
        t = t0 + n / len(targets)
        lan.emit(t, arp(scanner.mac, scanner.ip, ip), "arp")
        h = by_ip[ip]
        lan.emit(t + 0.0005, arp(h.mac, h.ip, scanner.ip, 2, scanner.mac, scanner.mac), "arp")


def trace(scenario: str, seed: int = 0, net: str = NET) -> list[tuple[float, bytes]]:
    """(t_s, frame) of one scenario ("steady", "power_restore", "scan"), sorted by time."""
    return [(t, f) for t, f, _ in labelled_trace(scenario, seed, net)]


# ------------------------------------------------------------------------- analysis


def classify(trace, aging_s: float = AGING_S) -> list[str | None]:
    """Each frame's flood class as the hub's switch would count it on the one port the
    whole trace comes in on (None: not flooded). Learning follows switch.py: a frame's
    source is learnt before its destination is looked up."""
    seen: dict[bytes, float] = {}
    out: list[str | None] = []
    for item in trace:
        t, frame = item[0], item[1]
        dst, src = frame[0:6], frame[6:12]
        seen[src] = t
        if dst[0] & 1:
            out.append("broadcast" if dst == b"\xff" * 6 else "multicast")
        else:
            last = seen.get(dst)
            out.append("unknown_unicast" if last is None or t - last > aging_s else None)
    return out


def _max_in_window(times: list[float], window_s: float) -> tuple[int, float]:
    """Most events in any half-open window [t, t + window_s), and where it starts."""
    best, at, j = 0, 0.0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window_s:
            j += 1
        if i - j + 1 > best:
            best, at = i - j + 1, times[j]
    return best, at


def passes(times: list[float], rate: float, burst_s: float = BURST_S) -> bool:
    """Whether a token bucket of `rate`/s, depth rate * burst_s (at least 1), full at the
    start, passes every event: the arithmetic of switch.py's _Bucket."""
    if rate <= 0:
        return not times
    burst = max(1.0, rate * burst_s)
    tokens, last = burst, None
    for t in times:
        if last is not None and t > last:
            tokens = min(burst, tokens + (t - last) * rate)
        last = t if last is None or t > last else last
        if tokens < 1.0:
            return False
        tokens -= 1.0
    return True


def min_bucket(times: list[float], burst_s: float = BURST_S) -> int:
    """The smallest whole rate (frames/s) whose bucket passes every event; 0 if none."""
    if not times:
        return 0
    lo, hi = 1, max(1, len(times))
    while not passes(times, hi, burst_s):
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if passes(times, mid, burst_s):
            hi = mid
        else:
            lo = mid + 1
    return lo


def peaks(trace, aging_s: float = AGING_S, burst_s: float = BURST_S) -> dict:
    """Per class: frames, the most in any 1 s and any 100 ms, and the smallest bucket rate
    (depth rate * burst_s) that passes the class without a drop."""
    classes = classify(trace, aging_s)
    times = {c: [] for c in CLASSES}
    for item, c in zip(trace, classes):
        if c is not None:
            times[c].append(item[0])
    out = {}
    for c in CLASSES:
        ts = times[c]
        m1, at1 = _max_in_window(ts, 1.0) if ts else (0, 0.0)
        m01, _ = _max_in_window(ts, 0.1) if ts else (0, 0.0)
        out[c] = {"frames": len(ts), "max_1s": m1, "max_1s_at_s": round(at1, 3),
                  "max_100ms": m01, "bucket_pps": min_bucket(ts, burst_s)}
    return out


def by_protocol(ltrace) -> dict[str, dict[str, int]]:
    """Flooded frames per class and protocol, for a labelled trace."""
    out: dict[str, dict[str, int]] = {c: {} for c in CLASSES}
    for (t, f, proto), c in zip(ltrace, classify(ltrace)):
        if c is not None:
            out[c][proto] = out[c].get(proto, 0) + 1
    return out


def flooded(trace, aging_s: float = AGING_S) -> list[tuple[float, bytes, str]]:
    """Only the frames the hub would flood, with their class: what a replay must send."""
    return [(item[0], item[1], c) for item, c in zip(trace, classify(trace, aging_s))
            if c is not None]


def busiest(trace, window_s: float) -> tuple[float, float]:
    """[start, end) of the window_s-long stretch holding the most flooded frames."""
    times = [x[0] for x in flooded(trace)]
    if not times:
        return 0.0, window_s
    _, at = _max_in_window(times, window_s)
    return at, at + window_s


def window(trace, start: float, end: float):
    """The frames with start <= t < end, times unchanged."""
    ts = [x[0] for x in trace]
    return trace[bisect.bisect_left(ts, start):bisect.bisect_left(ts, end)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--net", default=NET)
    args = ap.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {', '.join(unknown)}; one of {', '.join(SCENARIOS)}")
    report = {}
    for s in args.scenarios:
        lt = labelled_trace(s, args.seed, args.net)
        report[s] = {"duration_s": SCENARIOS[s], "frames": len(lt), "classes": peaks(lt),
                     "by_protocol": by_protocol(lt)}
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
