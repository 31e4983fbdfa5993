"""Hub switching with fake ports: no sockets, no TAP, start() never called."""

import dataclasses
import errno
import json
import socket
import time
from pathlib import Path

import pytest
from fakes import FakeClock, FakePort, FakeSession, edges, eth, hub_config

from l2vpn.config import (
    HubConfig,
    KeepaliveConfig,
    ListenConfig,
    ManagementConfig,
    SwitchConfig,
    TapConfig,
    TLSConfig,
)
from l2vpn.frame import BROADCAST
from l2vpn import admission
from l2vpn.hub import Hub
from l2vpn.eventloop import EventLoop
from l2vpn.offload import PLAIN_HDR

AGING_S = 60.0


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def hub(tmp_path, clock):
    cfg = hub_config(tmp_path, port=7443, aging_s=AGING_S)
    loop = EventLoop(clock=clock)
    h = Hub(cfg, edges(), loop=loop)
    yield h
    loop.close()


def with_ports(hub, *names, cls=FakePort):
    ports = [cls(n) for n in names]
    for p in ports:
        hub.switch.add_port(p)
    return ports


# -- forwarding ----------------------------------------------------------------------


def test_broadcast_reaches_every_port_but_the_ingress(hub):
    a, b, c = with_ports(hub, "a", "b", "c")
    f = eth(BROADCAST, mac(1))
    hub.bridge.forward(a, f)
    assert a.sent == [] and b.sent == [f] and c.sent == [f]


def test_unknown_unicast_floods(hub):
    a, b, c = with_ports(hub, "a", "b", "c")
    f = eth(mac(9), mac(1))
    hub.bridge.forward(b, f)
    assert a.sent == [f] and b.sent == [] and c.sent == [f]


def test_unicast_after_learning_reaches_one_port(hub):
    a, b, c = with_ports(hub, "a", "b", "c")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))         # mac 2 lives behind b
    for p in (a, b, c):
        p.sent.clear()
    f = eth(mac(2), mac(1))
    hub.bridge.forward(a, f)
    assert a.sent == [] and b.sent == [f] and c.sent == []
    reply = eth(mac(1), mac(2))
    hub.bridge.forward(b, reply)
    assert a.sent == [reply] and c.sent == []


def test_learned_mac_ages_out_and_floods_again(hub, clock):
    a, b, c = with_ports(hub, "a", "b", "c")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    clock.advance(AGING_S + 1)
    hub.bridge.tick(hub.loop.clock())               # ageing
    assert len(hub.switch) == 0
    c.sent.clear()
    hub.bridge.forward(a, eth(mac(2), mac(1)))
    assert len(c.sent) == 1


def test_frames_from_an_unknown_port_or_too_short_are_dropped(hub):
    a, b = with_ports(hub, "a", "b")
    stranger = FakePort("stranger")
    hub.bridge.forward(stranger, eth(BROADCAST, mac(1)))
    hub.bridge.forward(a, PLAIN_HDR + b"\xff" * 13)
    assert a.sent == [] and b.sent == []
    assert hub.switch.counters["unknown_port"] == 1 and hub.switch.counters["runt"] == 1


# -- backpressure --------------------------------------------------------------------


def test_congested_single_destination_pauses_the_source(hub):
    a, b, c = with_ports(hub, "a", "b", "c")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    b.congested = True
    f = eth(mac(2), mac(1))
    hub.bridge.forward(a, f)
    assert b.sent[-1] == f                          # the frame still goes; the port caps it
    assert a.pauses == 1 and a.paused
    assert b.waiters == [a]
    assert c.waiters == [] and b.pauses == 0


def test_uncongested_destination_does_not_pause(hub):
    a, b = with_ports(hub, "a", "b")
    hub.bridge.forward(b, eth(BROADCAST, mac(2)))
    hub.bridge.forward(a, eth(mac(2), mac(1)))
    assert a.pauses == 0 and b.waiters == []


def test_flooding_to_a_congested_port_does_not_pause(hub):
    a, b, c = with_ports(hub, "a", "b", "c")
    b.congested = True
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    assert a.pauses == 0 and b.waiters == [] and c.waiters == []
    assert len(b.sent) == len(c.sent) == 1


def test_single_port_flood_to_a_congested_port_pauses(hub):
    a, b = with_ports(hub, "a", "b")               # a flood with one other port is one port
    b.congested = True
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    assert a.pauses == 1 and b.waiters == [a]


# -- sessions as ports ---------------------------------------------------------------


def test_on_up_makes_a_session_a_port(hub):
    s = FakeSession("site-a")
    assert hub.admission.on_up(s) is None
    assert hub.sessions == {"site-a": s}
    assert s in hub.switch.ports


def test_on_up_refuses_a_hello_name_that_is_not_the_cn(hub):
    s = FakeSession("site-a", name="site-b")
    problem = hub.admission.on_up(s)
    assert "hello names node 'site-b'" in problem and "certificate CN is 'site-a'" in problem
    assert hub.sessions == {} and s not in hub.switch.ports


def test_a_newer_session_replaces_the_old_one(hub):
    old, new = FakeSession("site-a"), FakeSession("site-a", remote="192.0.2.9:1")
    hub.admission.on_up(old)
    hub.bridge.forward(old, eth(BROADCAST, mac(1)))
    hub.admission.on_up(new)
    assert old.goodbyes == ["replaced by a newer session"]
    assert hub.sessions == {"site-a": new}
    assert old not in hub.switch.ports
    assert mac(1) not in {m for m, _, _ in hub.switch.entries(hub.loop.clock())}
    assert [x["id"] for x in hub.status()["sessions"]] == [new.id] and new.id != old.id


def test_on_close_drops_the_port_and_its_macs(hub):
    s, t = FakeSession("site-a"), FakeSession("site-b")
    hub.admission.on_up(s)
    hub.admission.on_up(t)
    hub.bridge.forward(s, eth(BROADCAST, mac(1)))
    hub.admission.on_close(s, "peer closed the connection")
    assert hub.sessions == {"site-b": t}
    assert s not in hub.switch.ports and len(hub.switch) == 0


def _some_certificate_der() -> bytes:
    import datetime as dt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x1234)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


CERT_DER = _some_certificate_der()


class FakeTLS:
    def __init__(self, subject):
        self.subject = subject

    def getpeercert(self, binary_form=False):
        return CERT_DER if binary_form else {"subject": self.subject}


def secured(subject) -> FakeSession:
    s = FakeSession("unset")
    s.cn = None
    s.tls = FakeTLS(subject)
    return s


@pytest.mark.parametrize("cn, ok", [("site-a", True), ("bad name", False), ("-x", False)])
def test_on_secure_checks_the_cn(hub, cn, ok):
    s = secured(((("commonName", cn),),))
    problem = hub.admission.on_secure(s)
    if ok:
        assert problem is None and s.cn == cn
    else:
        assert "is not a valid node name" in problem and s.cn is None


def test_on_secure_refuses_the_tap_port_name_when_the_hub_has_a_tap(tmp_path):
    cfg = dataclasses.replace(hub_config(tmp_path), tap=TapConfig("l2vpn0"))
    hub = Hub(cfg, edges(), loop=EventLoop())
    assert "name of the hub's own TAP port" in hub.admission.on_secure(secured(((("commonName", "hub"),),)))


@pytest.mark.parametrize("subject, held", [((), 0),
                                            (((("commonName", "a"),), (("commonName", "b"),)), 2)],
                         ids=["no-cn", "two-cns"])
def test_on_secure_refuses_a_certificate_without_exactly_one_cn(hub, subject, held):
    s = secured(subject)
    problem = hub.admission.on_secure(s)
    assert problem.startswith("refused: ") and f"it holds {held}" in problem
    assert s.cn is None


# -- status --------------------------------------------------------------------------


def test_status_lists_node_sessions_and_macs(hub, clock):
    a = with_ports(hub, "a")[0]
    s = FakeSession("site-b")
    hub.admission.on_up(s)
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))
    hub.bridge.forward(s, eth(BROADCAST, mac(2)))
    clock.advance(2.5)
    st = hub.status()
    assert st["node"] == "hub" and st["role"] == "hub"
    assert st["listen"] == "127.0.0.1:7443"
    assert [x["cn"] for x in st["sessions"]] == ["site-b"]
    assert st["sessions"][0]["id"] == s.id and type(s.id) is int
    assert st["macs"] == [
        {"mac": "02:00:00:00:00:01", "vlan": None, "port": "a", "age_s": 2.5, "ips": []},
        {"mac": "02:00:00:00:00:02", "vlan": None, "port": "site-b", "age_s": 2.5,
         "ips": []},
    ]
    assert st["switch"]["entries"] == 2 and st["switch"]["counters"]["learned"] == 2
    assert json.loads(json.dumps(st)) == st


def test_status_sessions_are_sorted_by_cn(hub):
    for cn in ("site-c", "site-a", "site-b"):
        hub.admission.on_up(FakeSession(cn))
    st = hub.status()
    assert [x["cn"] for x in st["sessions"]] == ["site-a", "site-b", "site-c"]
    assert len({x["id"] for x in st["sessions"]}) == 3


def test_request_status_and_unknown(hub):
    stream = hub._request("status")              # streamed: see test_hub_status
    assert json.loads(b"".join(iter(lambda: stream.pull(65536), None)))["node"] == "hub"
    assert "unknown request" in hub._request("reboot")["error"]


class _Exhausted(socket.socket):
    """A listener whose accept() fails as when the process is out of descriptors."""

    calls = 0

    def accept(self):
        type(self).calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_out_of_descriptors_the_hub_rests_instead_of_spinning(tmp_path):
    loop = EventLoop()
    hub = Hub(HubConfig(
        path=tmp_path / "hub.yaml", node="hub", listen=ListenConfig("127.0.0.1", 0),
        tls=TLSConfig(Path("ca.crt"), Path("hub.crt"), Path("hub.key")), tap=None,
        switch=SwitchConfig(), management=ManagementConfig(socket=tmp_path / "hub.sock"),
        keepalive=KeepaliveConfig()), edges(), loop=loop)
    listener = _Exhausted()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())   # keeps it readable
        hub.admission.open(listener, context=None)
        loop.call_later(0.3, loop.stop)
        started = time.process_time()
        loop.run()
        # one failed accept, then rest (0.5 s): not thousands of tries burning a core
        assert _Exhausted.calls == 1
        assert time.process_time() - started < 0.2
        loop.call_later(admission.ACCEPT_REST_S, loop.stop)
        loop.run()
        assert _Exhausted.calls >= 2                                 # it tries again
        client.close()
    finally:
        listener.close()
        loop.close()


# -- hosts: the addresses a MAC uses ---------------------------------------------------


def arp_from(src: bytes, ip: str) -> bytes:
    """An ARP request from src claiming ip, in vnet form."""
    body = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + src + bytes(map(int, ip.split("."))) +
            bytes(6) + bytes([198, 19, 0, 1]))
    return PLAIN_HDR + BROADCAST + src + b"\x08\x06" + body + bytes(18)


def test_status_names_the_ips_a_mac_used_and_they_age_with_it(hub, clock):
    a = with_ports(hub, "a")[0]
    hub.bridge.forward(a, arp_from(mac(1), "198.19.0.10"))
    hub.bridge.forward(a, arp_from(mac(1), "198.19.0.11"))
    assert [m["ips"] for m in hub.status()["macs"]] == [["198.19.0.11", "198.19.0.10"]]
    clock.advance(AGING_S + 1)
    hub.bridge.tick(hub.loop.clock())
    assert hub.status()["macs"] == [] and len(hub.bridge.hosts) == 0


def test_a_port_that_goes_takes_its_hosts_addresses_along(hub):
    s = FakeSession("site-b")
    hub.admission.on_up(s)
    hub.bridge.forward(s, arp_from(mac(2), "198.19.0.20"))
    assert hub.bridge.hosts.ips(mac(2)) == ["198.19.0.20"]
    hub.admission.on_close(s, "test over")
    hub.bridge.tick(hub.loop.clock())
    assert hub.bridge.hosts.ips(mac(2)) == []


def test_only_frames_that_can_prove_an_address_are_inspected(hub, monkeypatch):
    a, b = with_ports(hub, "a", "b")
    seen = []
    monkeypatch.setattr(hub.bridge.hosts, "observe", lambda frame, offset: seen.append(frame))
    tcp = PLAIN_HDR + mac(2) + mac(1) + b"\x08\x00" + bytes(9) + b"\x06" + bytes(36)
    udp = PLAIN_HDR + mac(2) + mac(1) + b"\x08\x00" + bytes(9) + b"\x11" + bytes(36)
    short = PLAIN_HDR + mac(2) + mac(1) + b"\x08\x00" + bytes(2)
    for frame in (tcp, tcp, short):
        hub.bridge.forward(a, frame)
    assert seen == []
    hub.bridge.forward(a, udp)
    hub.bridge.forward(a, arp_from(mac(1), "198.19.0.10"))
    assert seen == [udp, arp_from(mac(1), "198.19.0.10")]
