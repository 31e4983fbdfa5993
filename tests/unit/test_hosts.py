"""hosts.sightings over frames scapy builds (as hosts send them), and the HostTable's
bounds; hostile bytes never raise."""

from hypothesis import given, settings, strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import (DHCP6_Reply, DHCP6OptClientId, DHCP6OptIA_NA,
                                DHCP6OptIAAddress)
from scapy.layers.inet import IP, UDP, ICMP
from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Dot1Q, Ether

from l2vpn.frame import parse_mac
from l2vpn.hosts import HostTable, sightings

A = "02:00:00:00:00:0a"
B = "02:00:00:00:00:0b"
MA, MB = parse_mac(A), parse_mac(B)


def raw(pkt) -> bytes:
    return bytes(pkt)


def test_arp_request_reply_and_gratuitous_name_the_sender():
    req = Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="198.19.0.10",
                                                      pdst="198.19.0.3")
    rep = Ether(src=B, dst=A) / ARP(op=2, hwsrc=B, psrc="198.19.0.3", hwdst=A,
                                    pdst="198.19.0.10")
    grat = Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=A, psrc="198.19.0.11",
                                                       pdst="198.19.0.11")
    assert sightings(raw(req)) == [(MA, "198.19.0.10")]
    assert sightings(raw(rep)) == [(MB, "198.19.0.3")]
    assert sightings(raw(grat)) == [(MA, "198.19.0.11")]


def test_arp_probe_and_proxied_answers_prove_nothing():
    probe = Ether(src=A) / ARP(op=1, hwsrc=A, psrc="0.0.0.0", pdst="198.19.0.10")
    proxied = Ether(src=B) / ARP(op=2, hwsrc=A, psrc="198.19.0.10")
    assert sightings(raw(probe)) == [] and sightings(raw(proxied)) == []


def test_a_tagged_arp_and_a_vnet_offset_are_read():
    tagged = Ether(src=A) / Dot1Q(vlan=20) / Dot1Q(vlan=7) / ARP(hwsrc=A, psrc="198.19.0.10")
    assert sightings(raw(tagged)) == [(MA, "198.19.0.10")]
    assert sightings(bytes(10) + raw(tagged), offset=10) == [(MA, "198.19.0.10")]


def test_neighbour_solicitation_advertisement_and_dad():
    ns = (Ether(src=A, dst="33:33:ff:00:00:0b") /
          IPv6(src="fe80::a", dst="ff02::1:ff00:b") / ICMPv6ND_NS(tgt="fe80::b") /
          ICMPv6NDOptSrcLLAddr(lladdr=A))
    na = Ether(src=B, dst=A) / IPv6(src="fe80::b", dst="fe80::a") / ICMPv6ND_NA(tgt="fe80::b")
    dad = (Ether(src=A, dst="33:33:ff:00:00:0c") / IPv6(src="::", dst="ff02::1:ff00:c") /
           ICMPv6ND_NS(tgt="2001:db8::c"))
    assert sightings(raw(ns)) == [(MA, "fe80::a")]
    assert sightings(raw(na)) == [(MB, "fe80::b")]
    assert sightings(raw(dad)) == [(MA, "2001:db8::c")]


def test_dhcp_ack_names_the_client_but_an_offer_does_not():
    def reply(kind):
        return (Ether(src=B, dst=A) / IP(src="198.19.0.1", dst="198.19.0.50") /
                UDP(sport=67, dport=68) /
                BOOTP(op=2, yiaddr="198.19.0.50", chaddr=MA + bytes(10)) /
                DHCP(options=[("message-type", kind), "end"]))
    assert sightings(raw(reply("ack"))) == [(MA, "198.19.0.50")]
    assert sightings(raw(reply("offer"))) == []


def test_dhcpv6_reply_names_its_unicast_client():
    reply = (Ether(src=B, dst=A) / IPv6(src="fe80::b", dst="fe80::a") /
             UDP(sport=547, dport=546) / DHCP6_Reply(trid=7) /
             DHCP6OptClientId() /
             DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="2001:db8::50"),
                                             DHCP6OptIAAddress(addr="2001:db8::51")]))
    assert sightings(raw(reply)) == [(MA, "2001:db8::50"), (MA, "2001:db8::51")]


def test_ordinary_traffic_yields_nothing():
    for pkt in (Ether(src=A, dst=B) / IP(src="198.19.0.10", dst="198.19.0.3") / ICMP(),
                Ether(src=A, dst=B) / IP() / UDP(sport=53, dport=53),
                Ether(src=A, dst=B) / IPv6(src="fe80::a", dst="fe80::b") / UDP(),
                Ether(src=A, dst=B, type=0x88B5) / (b"x" * 40)):
        assert sightings(raw(pkt)) == []


@settings(max_examples=500)
@given(st.binary(max_size=200), st.sampled_from([b"\x08\x06", b"\x86\xdd", b"\x08\x00"]))
def test_hostile_bytes_never_raise(body, ethertype):
    frame = bytes(12) + ethertype + body
    for mac, ip in sightings(frame):
        assert len(mac) == 6 and isinstance(ip, str)
    for cut in range(0, len(frame), 7):
        sightings(frame[:cut])
        sightings(memoryview(frame)[:cut])


def test_at_most_per_mac_addresses_newest_first():
    t = HostTable(per_mac=3)
    for i in range(10):
        t.learn(MA, f"198.19.0.{i}")
    assert t.ips(MA) == ["198.19.0.9", "198.19.0.8", "198.19.0.7"]
    t.learn(MA, "198.19.0.7")                      # seen again: newest
    assert t.ips(MA) == ["198.19.0.7", "198.19.0.9", "198.19.0.8"]


def test_a_full_table_learns_no_new_mac_and_evicts_no_one():
    t = HostTable(max_macs=2)
    assert t.learn(MA, "198.19.0.1") and t.learn(MB, "198.19.0.2")
    assert not t.learn(parse_mac("02:00:00:00:00:0c"), "198.19.0.3")
    assert len(t) == 2 and t.ips(MA) == ["198.19.0.1"]


def test_forget_keep_only_and_find():
    t = HostTable()
    t.learn(MA, "198.19.0.1")
    t.learn(MB, "2001:db8::1")
    assert t.macs_with("2001:DB8::1") == [MB]
    t.keep_only(lambda mac: mac == MB)
    assert t.ips(MA) == [] and t.ips(MB) == ["2001:db8::1"]
    t.forget(MB)
    assert len(t) == 0


def test_observe_learns_from_a_frame():
    t = HostTable()
    t.observe(raw(Ether(src=A) / ARP(hwsrc=A, psrc="198.19.0.10")))
    assert t.ips(MA) == ["198.19.0.10"]
