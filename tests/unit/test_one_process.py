"""A hub with its own TAP and two spokes in one process, on one loop, without root: real
TLS sessions over socket pairs and TAPs that are SOCK_SEQPACKET pairs (fakes.FakeNetwork).
Frames go in at one site's LAN and are checked where they come out."""

import contextlib
import socket

import pytest
from fakes import FakeNetwork, run_until

from l2vpn.config import (HubConfig, HubEndpoint, KeepaliveConfig, ListenConfig,
                          ManagementConfig, ReconnectConfig, SpokeConfig, SwitchConfig,
                          TapConfig, TLSConfig)
from l2vpn.eventloop import READ, EventLoop
from l2vpn.hub import Hub
from l2vpn.spoke import Spoke

HUB_ADDR = ("198.18.0.1", 7443)
BROADCAST = b"\xff" * 6
MAC = {"a": b"\x02\x00\x00\x00\x0a\x01", "b": b"\x02\x00\x00\x00\x0b\x01",
       "h": b"\x02\x00\x00\x00\x01\x01"}
IP = {"a": bytes([198, 19, 0, 10]), "b": bytes([198, 19, 0, 11])}


def arp(op: int, src: str, dst_mac: bytes, target: str) -> bytes:
    body = (b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big") + MAC[src] + IP[src] +
            (dst_mac if op == 2 else bytes(6)) + IP[target])
    return (BROADCAST if op == 1 else dst_mac) + MAC[src] + b"\x08\x06" + body + bytes(18)


def ip_frame(dst: str, src: str, size: int = 1500, seq: int = 0) -> bytes:
    payload = seq.to_bytes(4, "big") + bytes(size - 4)
    return MAC[dst] + MAC[src] + b"\x08\x00" + payload


class Lan:
    """A site's LAN: what the node writes to its TAP lands in `got`, read on the loop."""

    def __init__(self, loop, device):
        self.loop, self.sock = loop, device.lan
        self.sock.setblocking(False)
        self.got = []
        self.reading = True
        loop.watch(self.sock, READ, self._read)

    def _read(self, _mask):
        while True:
            try:
                self.got.append(self.sock.recv(65536))
            except BlockingIOError:
                return

    def stop_reading(self):
        self.reading = False
        self.loop.watch(self.sock, 0, None)

    def start_reading(self):
        self.reading = True
        self.loop.watch(self.sock, READ, self._read)
        self._read(READ)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def take(self) -> list:
        got, self.got = self.got, []
        return got


def hub_config(tmp_path, ca):
    return HubConfig(
        path=tmp_path / "hub.yaml", node="hub", listen=ListenConfig(*HUB_ADDR),
        tls=tls_of(ca, "hub"), tap=TapConfig("hub0", mac=MAC["h"]), switch=SwitchConfig(),
        management=ManagementConfig(tmp_path / "hub.sock"), keepalive=KeepaliveConfig())


def tls_of(ca, name):
    return TLSConfig(ca / "ca.crt", ca / f"{name}.crt", ca / f"{name}.key")


@contextlib.contextmanager
def running_site(hub_cfg, ca, tmp_path):
    """The hub `hub_cfg` describes and spokes site-a and site-b, started on one loop and
    up at both ends; yields (loop, hub, spokes, LANs by h/a/b), closes all of it after."""
    loop = EventLoop()
    net = FakeNetwork()
    hub = Hub(hub_cfg, net.edges(), loop=loop)
    spokes = [Spoke(SpokeConfig(
        path=tmp_path / f"{name}.yaml", node=name, hub=HubEndpoint(*HUB_ADDR),
        tls=tls_of(ca, name), tap=TapConfig(f"{name}0"),
        management=ManagementConfig(tmp_path / f"{name}.sock"), keepalive=KeepaliveConfig(),
        reconnect=ReconnectConfig()), net.edges(), loop=loop)
        for name in ("site-a", "site-b")]
    nodes = [hub, *spokes]
    try:
        for node in nodes:
            node.start()
        run_until(loop, lambda: len(hub.sessions) == 2 and all(s.ports() for s in spokes),
                  what="both spokes up, at the hub and at each spoke")
        lans = {"h": Lan(loop, net.taps["hub0"]), "a": Lan(loop, net.taps["site-a0"]),
                "b": Lan(loop, net.taps["site-b0"])}
        yield loop, hub, spokes, lans
    finally:
        for node in reversed(nodes):
            node.close()
        loop.close()


@pytest.fixture
def site(tmp_path, fresh_ca):
    with running_site(hub_config(tmp_path, fresh_ca), fresh_ca, tmp_path) as parts:
        yield parts


def settle(loop, lans, want: dict, what: str):
    """Run until each LAN got at least the frames `want` says (name -> count)."""
    run_until(loop, lambda: all(len(lans[k].got) >= n for k, n in want.items()), what=what)


def test_arp_unicast_and_flood_cross_the_hub(site):
    loop, hub, _spokes, lans = site
    request = arp(1, "a", BROADCAST, "b")
    lans["a"].send(request)
    settle(loop, lans, {"b": 1, "h": 1}, "the ARP request flooded to site-b and the hub")
    assert lans["b"].take() == [request] and lans["h"].take() == [request]

    reply = arp(2, "b", MAC["a"], "a")
    lans["b"].send(reply)
    settle(loop, lans, {"a": 1}, "the ARP reply at site-a")
    assert lans["a"].take() == [reply]
    assert lans["h"].got == []                 # known unicast: to one port only

    data = ip_frame("b", "a", seq=7)
    lans["a"].send(data)
    settle(loop, lans, {"b": 1}, "a unicast frame at site-b")
    assert lans["b"].take() == [data] and lans["h"].got == []

    unknown = MAC["h"][:5] + b"\x77"            # learnt nowhere: flooded, not to its sender
    frame = unknown + MAC["b"] + b"\x08\x00" + bytes(100)
    lans["b"].send(frame)
    settle(loop, lans, {"a": 1, "h": 1}, "the unknown unicast flooded")
    assert lans["a"].take() == [frame] and lans["h"].take() == [frame]
    assert lans["b"].got == []

    st = hub.status()
    where = {m["mac"]: m["port"] for m in st["macs"]}
    assert where["02:00:00:00:0a:01"] == "site-a" and where["02:00:00:00:0b:01"] == "site-b"
    ips = {m["mac"]: m["ips"] for m in st["macs"]}
    assert ips["02:00:00:00:0a:01"] == ["198.19.0.10"]


def test_a_slow_site_pauses_its_sender_instead_of_losing_frames(site):
    loop, hub, spokes, lans = site
    lans["b"].send(arp(1, "b", BROADCAST, "a"))            # the hub learns site-b's MAC
    settle(loop, lans, {"a": 1}, "site-b known")
    lans["a"].take()
    lans["h"].take()
    slow = spokes[1].session
    slow.pause()                                # site-b's spoke stops reading the hub
    paused = []
    a_port = hub.sessions["site-a"]
    sent = 0
    # Far more than every buffer on the way holds (socket pairs, the hub's 1 MiB high water).
    total = 6000
    sender = lans["a"].sock
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)

    def feed():
        nonlocal sent
        while sent < total:
            try:
                sender.send(ip_frame("b", "a", seq=sent))
            except BlockingIOError:
                loop.call_later(0.001, feed)    # site-a's TAP is full: its node is paused
                return
            sent += 1
        paused.append("done")

    def watch_pause():
        if a_port.paused:
            paused.append("hub paused site-a")
        if "hub paused site-a" not in paused:
            loop.call_later(0.001, watch_pause)

    feed()
    watch_pause()
    run_until(loop, lambda: "hub paused site-a" in paused, timeout_s=10,
              what="the hub pausing site-a while site-b does not read")
    assert hub.sessions["site-b"].congested
    slow.resume()
    far_tap = spokes[1].tap
    run_until(loop, lambda: "done" in paused and len(lans["b"].got) + far_tap.drops >= total,
              timeout_s=30, what="every frame through once site-b reads again")
    # The hub and both sessions lost nothing; only site-b's TAP may drop, as a real TAP
    # does when its queue is full (this fake's is a socket pair's few hundred KiB).
    assert hub.sessions["site-b"].drops == 0 and hub.sessions["site-a"].frames_in == total
    assert spokes[1].session.drops == spokes[0].session.drops == 0
    assert spokes[0].tap.drops == 0             # site-a was slowed down, not dropped
    seqs = [int.from_bytes(f[14:18], "big") for f in lans["b"].got]
    assert seqs == sorted(set(seqs)) and len(seqs) + far_tap.drops == total   # in order
    assert lans["h"].got == []


class Watcher:
    def __init__(self):
        self.events = []

    def port_up(self, name, port):
        self.events.append(("up", name, port))

    def port_down(self, name, port):
        self.events.append(("down", name, port))


def test_port_watchers_hear_of_ports_coming_and_going(site):
    loop, hub, spokes, _lans = site
    assert set(hub.ports()) == {"hub", "site-a", "site-b"}
    assert set(spokes[0].ports()) == {"hub"}
    at_hub, at_spoke = Watcher(), Watcher()
    hub.port_watchers.append(at_hub)
    spokes[1].port_watchers.append(at_spoke)
    old = hub.sessions["site-b"]
    spokes[1].session.close("test: link lost")
    run_until(loop, lambda: "site-b" not in hub.sessions, what="the hub seeing site-b go")
    assert at_hub.events == [("down", "site-b", old)]
    assert at_spoke.events[0][:2] == ("down", "hub")
    run_until(loop, lambda: "site-b" in hub.sessions and spokes[1].ports(), timeout_s=10,
              what="site-b back, at both ends")
    assert at_hub.events[1] == ("up", "site-b", hub.sessions["site-b"])
    assert at_spoke.events[1] == ("up", "hub", spokes[1].session)
    assert set(hub.ports()) == {"hub", "site-a", "site-b"}
