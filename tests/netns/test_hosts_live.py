"""Hosts, not only MACs: a real hub learns the addresses each MAC uses from the ARP and
neighbour discovery that cross it, and `l2vpn macs --ip` finds where a host is."""

import json


def macs(lab, *args):
    out = lab.l2vpn("macs", "-s", str(lab.nodes["hub"].socket), "--json", *args)
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else [])


def test_macs_finds_a_host_by_its_ipv4_and_link_local_addresses(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"], lan={"site-a": ["lan-a"]}, ipv6=True)
    lab.wait_ping(lab.ns("site-b"), lab.ip("lan-a"))       # ARP both ways, through the hub
    rc, found = macs(lab, "--ip", lab.ip("lan-a"))
    assert rc == 0 and [(m["mac"], m["port"]) for m in found] == [(lab.mac("lan-a"), "site-a")]
    rc, found = macs(lab, "--ip", lab.ip("site-b"))
    assert rc == 0 and [(m["mac"], m["port"]) for m in found] == [(lab.mac("site-b"), "site-b")]

    # IPv6: every kernel's duplicate address detection for its link-local address crosses
    # the hub as a neighbour solicitation, so site-b's is known without any traffic.
    def link_local_known():
        rc, found = macs(lab, "--mac", lab.mac("site-b"))
        return rc == 0 and any(ip.startswith("fe80::") for ip in found[0]["ips"]) and found
    found = lab.wait_until(link_local_known, 15, what="site-b's link-local address at the hub")
    ll = next(ip for ip in found[0]["ips"] if ip.startswith("fe80::"))
    rc, again = macs(lab, "--ip", ll)
    assert rc == 0 and [m["port"] for m in again] == ["site-b"]

    rc, none = macs(lab, "--ip", "198.19.0.250")
    assert rc == 1 and none == []
    text = lab.l2vpn("status", "-s", str(lab.nodes["hub"].socket)).stdout
    row = next(line for line in text.splitlines() if line.startswith(lab.mac("lan-a")))
    assert lab.ip("lan-a") in row.split()
