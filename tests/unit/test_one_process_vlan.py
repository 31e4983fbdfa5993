"""VLANs end to end in one process, without root: a hub whose own TAP is a trunk of 20 and
30, site-a an access port of VLAN 20, site-b a trunk of 10 and 20 with native VLAN 10,
read from real YAML. Frames go in at one LAN and are checked where they come out."""

import pytest
from fakes import run_until
from test_one_process import MAC, arp, running_site, settle

from l2vpn import config, vlan

BROADCAST = b"\xff" * 6

HUB_YAML = """\
node: hub
listen: {{address: 198.18.0.1, port: 7443}}
tls: {{ca: {ca}/ca.crt, cert: {ca}/hub.crt, key: {ca}/hub.key}}
tap: {{name: hub0, mac: "02:00:00:00:01:01"}}
management: {{socket: {tmp}/hub.sock}}
switch:
  storm: {{broadcast_pps: 0, multicast_pps: 0, unknown_unicast_pps: 0}}
ports:
  hub: {{vlan: {{mode: trunk, allowed: [20, 30]}}}}
  site-a: {{vlan: {{mode: access, vid: 20}}}}
  site-b: {{vlan: {{mode: trunk, allowed: [10, 20], native: 10}}}}
"""


def tagged(frame: bytes, vid: int) -> bytes:
    return bytes(vlan.tag(frame, vid))


@pytest.fixture
def site(tmp_path, fresh_ca):
    path = tmp_path / "hub.yaml"
    path.write_text(HUB_YAML.format(ca=fresh_ca, tmp=tmp_path))
    with running_site(config.load_hub(path), fresh_ca, tmp_path) as (loop, hub, _, lans):
        yield loop, hub, lans


def test_vlans_keep_sites_apart_and_tags_fit_each_port(site):
    loop, hub, lans = site
    assert hub.switch.vlans_on

    # site-a is VLAN 20 untagged; the trunks carry it tagged 20
    request = arp(1, "a", BROADCAST, "b")
    lans["a"].send(request)
    settle(loop, lans, {"b": 1, "h": 1}, "site-a's ARP request at site-b and the hub")
    assert lans["b"].take() == [tagged(request, 20)] and lans["h"].take() == [tagged(request, 20)]

    # the answer, tagged 20 at site-b, reaches site-a untagged and only site-a
    reply = arp(2, "b", MAC["a"], "a")
    lans["b"].send(tagged(reply, 20))
    settle(loop, lans, {"a": 1}, "site-b's ARP reply at site-a")
    assert lans["a"].take() == [reply]

    # untagged at site-b is native VLAN 10: nobody else carries it. A broadcast in VLAN 20
    # sent after it, on the same path, proves it was not merely slow.
    native = BROADCAST + MAC["b"] + b"\x08\x06" + bytes(46)
    lans["b"].send(native)
    marker = BROADCAST + MAC["b"] + b"\x88\xb6" + b"marker".ljust(46, b"\0")
    lans["b"].send(tagged(marker, 20))
    settle(loop, lans, {"a": 1, "h": 1}, "the VLAN 20 marker at site-a and the hub")
    assert lans["a"].take() == [marker] and lans["h"].take() == [tagged(marker, 20)]

    # the hub's TAP: VLAN 30 goes nowhere (no site carries it), VLAN 10 is refused
    lans["h"].send(tagged(BROADCAST + MAC["h"] + b"\x88\xb6" + bytes(46), 30))
    lans["h"].send(tagged(BROADCAST + MAC["h"] + b"\x88\xb6" + bytes(46), 10))
    run_until(loop, lambda: hub.switch.counters["vlan"] >= 1, what="VLAN 10 refused at the hub")
    lans["h"].send(tagged(marker[:6] + MAC["h"] + marker[12:], 20))
    settle(loop, lans, {"a": 1, "b": 1}, "the hub's VLAN 20 marker")
    assert lans["a"].take() == [marker[:6] + MAC["h"] + marker[12:]]
    assert lans["b"].take() == [tagged(marker[:6] + MAC["h"] + marker[12:], 20)]

    st = hub.status()
    rows = {(m["mac"], m["vlan"]): m["port"] for m in st["macs"]}
    assert rows == {("02:00:00:00:0a:01", 20): "site-a", ("02:00:00:00:0b:01", 20): "site-b",
                    ("02:00:00:00:0b:01", 10): "site-b", ("02:00:00:00:01:01", 20): "hub",
                    ("02:00:00:00:01:01", 30): "hub"}
    ips = {(m["mac"], m["vlan"]): m["ips"] for m in st["macs"]}
    assert ips["02:00:00:00:0a:01", 20] == ["198.19.0.10"]
    assert st["tap"]["switch"]["drops"]["vlan"] == 1
